"""The command-line surface is frozen: every subcommand and the option strings of its flags.

``cli_surface.json`` next to this file is the golden copy, read from ``tierplan.cli.build_parser()``.
A new, renamed or removed subcommand or flag fails this test until the golden file says so too,
so that the surface changes only on purpose (new knobs belong in the scenario schema). After a
deliberate change, regenerate the file and commit it with the change:

    PYTHONPATH=. python tests/tierplan/test_cli_surface.py --update
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

GOLDEN = pathlib.Path(__file__).with_name("cli_surface.json")


def _surface(parser: argparse.ArgumentParser, prefix: str, out: dict[str, list[str]]) -> None:
    """``out["hw show"] = ["--json", "-h, --help", "NAME"]``: each command's flags, with every
    option string in argparse's order, and its positional arguments by name (sorted)."""
    args: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                _surface(sub, f"{prefix} {name}", out)
        elif action.option_strings:
            args.append(", ".join(action.option_strings))
        else:  # a positional argument: its name in the usage line
            args.append(str(action.metavar or action.dest))
    out[prefix] = sorted(args)


def cli_surface() -> dict[str, list[str]]:
    from tierplan.cli import build_parser
    from validate import bench, infer_bench

    out: dict[str, list[str]] = {}
    _surface(build_parser(), "tierplan", out)
    # `tierplan bench` hands everything after it to the bench's own parser
    _surface(bench.build_parser(prog="tierplan bench"), "tierplan bench", out)
    _surface(infer_bench.build_parser(prog="tierplan bench infer"), "tierplan bench infer", out)
    return dict(sorted(out.items()))


def _render(surface: dict[str, list[str]]) -> str:
    return json.dumps(surface, indent=1) + "\n"


def test_cli_surface_matches_the_golden_file():
    golden = json.loads(GOLDEN.read_text())
    now = cli_surface()
    added = sorted(set(now) - set(golden))
    removed = sorted(set(golden) - set(now))
    assert not added and not removed, f"subcommands added {added}, removed {removed}; see the docstring"
    changed = {cmd: {"added": [a for a in now[cmd] if a not in golden[cmd]],
                     "removed": [a for a in golden[cmd] if a not in now[cmd]]}
               for cmd in now if now[cmd] != golden[cmd]}
    assert not changed, f"flags changed: {changed}; see the module docstring to update the golden file"


def test_the_surface_sees_a_new_flag():
    from tierplan.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["plan"].add_argument("--a-new-knob")
    out: dict[str, list[str]] = {}
    _surface(parser, "tierplan", out)
    assert "--a-new-knob" in out["tierplan plan"]
    assert "--a-new-knob" not in json.loads(GOLDEN.read_text())["tierplan plan"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(f"usage: {sys.argv[0]} --update  (rewrites {GOLDEN.name})")
    GOLDEN.write_text(_render(cli_surface()))
    print(f"wrote {GOLDEN}")
