"""The one reader for files a user hands to tierplan: parsed as data, never executed.

Models: scenario files, model configs, node and preset files, measurement records, layout CSVs
and plan files all arrive through ``read_user_bytes`` / ``read_user_text`` /
``read_user_data``. A path must name a regular file (symlinks are followed, loops refused; a
directory, FIFO, socket or device such as /dev/zero is refused before it is opened), at most
``limits.MAX_FILE_BYTES`` long, UTF-8 text where text is expected. JSON and YAML parse into
plain data (dict, list, str, int, float, bool, None) nested at most ``limits.MAX_NESTING``
deep; YAML goes through a SafeLoader that admits at most ``limits.MAX_YAML_ALIASES`` alias
uses (a 500-byte "billion laughs" file otherwise expands to gigabytes inside the validator)
and reads only ``true`` / ``false`` as booleans (YAML 1.1's ``yes``/``no``/``on``/``off`` are
strings, so ``tp: yes`` is an error rather than 1).
Assumes: files are small (configs and records); memory snapshots have their own larger cap.
Ignores: files that change while being read.
Every failure is one ``UserInputError`` line that names the file and the reason.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import stat
from typing import Any

from hwmodels.limits import MAX_FILE_BYTES, MAX_NESTING, MAX_YAML_ALIASES
from hwmodels.units import UserInputError, format_bytes

PathLike = str | os.PathLike[str]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symlink loop"
    return err.strerror or type(err).__name__


def read_user_bytes(path: PathLike, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``), or one-line UserInputError."""
    where = os.fspath(path)
    try:
        st = os.stat(where)  # follows symlinks; a loop raises ELOOP
    except FileNotFoundError:
        raise UserInputError(f"{where}: file not found") from None
    except OSError as err:
        raise UserInputError(f"{where}: cannot read: {_os_reason(err)}") from None
    except ValueError:  # an embedded NUL byte in the path
        raise UserInputError(f"{where!r}: not a valid path") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserInputError(f"{where}: cannot read: {_kind(st.st_mode)}, expected a regular file")
    if st.st_size > max_bytes:
        raise UserInputError(f"{where}: {format_bytes(st.st_size)}, larger than the "
                             f"{format_bytes(max_bytes)} a tierplan input may be")
    try:
        with open(where, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise UserInputError(f"{where}: cannot read: {_os_reason(err)}") from None
    if len(data) > max_bytes:  # grew while we read it
        raise UserInputError(f"{where}: larger than the {format_bytes(max_bytes)} a tierplan input may be")
    return data


def read_user_text(path: PathLike, *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """``read_user_bytes`` decoded as UTF-8; binary files are refused in one line."""
    data = read_user_bytes(path, max_bytes=max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserInputError(f"{os.fspath(path)}: not UTF-8 text (byte {err.start}); "
                             "expected a text file") from None


def check_depth(data: Any, where: str, *, max_depth: int = MAX_NESTING) -> Any:
    """``data`` unchanged when its lists and dicts nest at most ``max_depth`` deep."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise UserInputError(f"{where}: nested deeper than {max_depth} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return data


def parse_json_text(text: str, where: str) -> Any:
    """JSON text -> plain data; malformed or too deeply nested JSON is one UserInputError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(
            f"{where}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise UserInputError(f"{where}: nested deeper than {MAX_NESTING} levels") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise UserInputError(f"{where}: malformed JSON: {str(err)[:80]}") from None
    return check_depth(data, where)


def _yaml_loader():
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        """SafeLoader with an alias budget, a nesting cap and YAML 1.2 booleans."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._aliases = 0
            self._depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    mark = self.peek_event().start_mark
                    raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (line {mark.line + 1}); "
                                         "expand them in the file")
            self._depth += 1
            try:
                if self._depth > MAX_NESTING:
                    raise yaml.YAMLError(f"nested deeper than {MAX_NESTING} levels")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                 for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    BoundedSafeLoader.yaml_implicit_resolvers = resolvers
    BoundedSafeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return BoundedSafeLoader


def parse_yaml_text(text: str, where: str) -> Any:
    """YAML text -> plain data through the bounded SafeLoader; errors are one UserInputError."""
    import yaml

    try:
        loader = _yaml_loader()(text)  # the reader refuses control characters here
    except yaml.YAMLError as err:
        raise UserInputError(f"{where}: malformed YAML: {str(err).splitlines()[0][:80]}") from None
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise UserInputError(f"{where}: malformed YAML{at}: {err.problem or 'cannot parse'}") from None
    except yaml.YAMLError as err:
        raise UserInputError(f"{where}: refused YAML: {err}") from None
    except RecursionError:
        raise UserInputError(f"{where}: nested deeper than {MAX_NESTING} levels") from None
    except ValueError as err:  # a constructor's conversion (a timestamp, a huge integer)
        raise UserInputError(f"{where}: malformed YAML: {str(err)[:80]}") from None
    finally:
        loader.dispose()
    return check_depth(data, where)


FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def read_user_json(path: PathLike) -> Any:
    """Plain data from the JSON file ``path``; every failure is one UserInputError naming it."""
    return parse_json_text(read_user_text(path), os.fspath(path))


def read_user_data(path: PathLike, *, formats: tuple[str, ...] = ("json", "yaml"),
                   what: str = "input") -> Any:
    """Plain data from a JSON or YAML file, the format chosen by the suffix."""
    where = os.fspath(path)
    fmt = FORMATS.get(pathlib.Path(where).suffix.lower())
    if fmt not in formats:
        names = " or ".join(s for s, f in FORMATS.items() if f in formats)
        raise UserInputError(f"{where}: unknown {what} format {pathlib.Path(where).suffix!r} (use {names})")
    text = read_user_text(path)
    return parse_json_text(text, where) if fmt == "json" else parse_yaml_text(text, where)


def read_user_mapping(path: PathLike, *, what: str = "input", **kwargs: Any) -> dict[str, Any]:
    """``read_user_data`` that must be a mapping (a JSON object)."""
    data = read_user_data(path, what=what, **kwargs)
    if not isinstance(data, dict):
        raise UserInputError(f"{os.fspath(path)}: expected a mapping of {what} fields, "
                             f"got {type(data).__name__}")
    return data
