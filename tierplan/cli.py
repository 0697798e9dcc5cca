"""The `tierplan` command line.

One console script with subcommands. Each subcommand lives in ``tierplan/commands/<name>.py``
and exposes ``register(subparsers)`` (cheap: argparse only) and ``run(args) -> int`` (heavy
imports such as torch or pulp happen there), so ``tierplan --help`` answers instantly.

Bad input raises ``hwmodels.units.UserInputError`` (or a pydantic ``ValidationError``) and is
printed as one line naming the field, with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Subcommand modules, in the order `tierplan --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "tierplan.commands.kernels",
    "tierplan.commands.hw",
    "tierplan.commands.estimate",
    "tierplan.commands.validate",
    "tierplan.commands.simulate",
    "tierplan.commands.layout",
    "tierplan.commands.plan",
    "tierplan.commands.search",
    "tierplan.commands.bench",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# torch is an optional extra: only the executor (`validate plan`, `bench run|infer`), tracing
# and the microbenchmarks import it; every other command runs without it
TORCH_MISSING = "this command runs PyTorch, which is not installed: pip install 'tierplan[torch]'"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (exit 2) without the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"tierplan: error: {message}\n")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> object:
        # argparse drops a value of "--" (``--warmup=--``) and hands the flag [] without its type
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {action.option_strings[0]}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)


class _Version(argparse.Action):
    """``--version``: the installed package's version (looked up only when asked, so that
    building the parser stays cheap)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from planners.plan import tierplan_version

        print(f"tierplan {tierplan_version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tierplan",
        description=(
            "Simulate and plan memory, time and cost of long-context LLM training and inference "
            "across GPU HBM, host DRAM, CXL, NVMe and the links between them."
        ),
    )
    parser.add_argument("--version", action=_Version, help="print the installed tierplan version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(argv) if argv is not None else sys.argv[1:]
    try:
        args = parser.parse_args(words)
    except SystemExit as stop:  # a usage error (one line already printed) or --help
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    args.argv = ["tierplan", *words]  # the command line as given, for measurement provenance
    from hwmodels.units import UserInputError, validation_error_line

    try:
        code = int(args.run(args) or EXIT_OK)
        sys.stdout.flush()  # a full or closed stdout fails here, inside the handlers below
        return code
    except UserInputError as err:
        print(f"tierplan {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return _stdout_closed()
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] != "torch":
            raise
        print(f"tierplan {args.command}: error: {TORCH_MISSING}", file=sys.stderr)
        return EXIT_FAILURE
    except SystemExit as stop:
        # rich's Console ends the process with SystemExit(1) from inside its BrokenPipeError
        # handler (after pointing stdout at /dev/null): a closed stdout, not a failure
        if isinstance(stop.__context__, BrokenPipeError):
            return _stdout_closed()
        raise
    except Exception as err:  # pydantic errors without importing pydantic up front
        if type(err).__name__ == "ValidationError":
            line = validation_error_line(err, getattr(err, "title", ""))
            print(f"tierplan {args.command}: error: {line}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(err, OSError) and _is_stdout_error():
            print(f"tierplan {args.command}: error: cannot write to stdout: "
                  f"{err.strerror or type(err).__name__}", file=sys.stderr)
            _detach_stdout()
            return EXIT_FAILURE
        raise


def _is_stdout_error() -> bool:
    """Whether stdout itself is failing (a full disk or device behind it)."""
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return False


def _detach_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _stdout_closed() -> int:
    """The reader of our stdout went away (``tierplan ... --json | head``): end quietly."""
    _detach_stdout()
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
