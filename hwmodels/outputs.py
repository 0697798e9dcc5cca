"""All-or-nothing output files: every file of a command appears, or none does.

Models: an ``OutputSet`` reserves each target up front (refusing a directory, a device such as
/dev/full, a missing parent folder, an extension the writer cannot produce, or the same path
twice), hands out a temporary path in the target's own folder, and on leaving the ``with``
block without an error renames every temporary file into place (``os.replace``: atomic per
file on POSIX). On an error, or when a write fails, every temporary file is removed and the
targets are left as they were, so a failed run never leaves a ``plan.json`` without its
``trace.json`` or a truncated layout.
Assumes: targets are regular files on a local filesystem (rename within one folder).
Ignores: a crash between two renames of one set (each file is still whole).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from hwmodels.units import UserInputError

IMAGE_SUFFIXES = (".png", ".svg", ".pdf")  # what the pictures' savefig writes


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputSet:
    """Reserve targets, write to temporaries, publish all at the end (``with OutputSet() as out``)."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path, str]] = []  # (temporary, target, field)

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def reserve(self, target: str | os.PathLike[str], *, field: str,
                suffixes: Iterable[str] | None = None) -> Path:
        """A temporary path (same folder, same suffix) that becomes ``target`` on commit."""
        final = Path(target)
        where = f"{field}: {final}"
        if suffixes is not None:
            allowed = tuple(suffixes)
            if final.suffix.lower() not in allowed:
                raise UserInputError(f"{where}: unsupported extension {final.suffix or '(none)'!r} "
                                     f"(use {', '.join(allowed)})")
        if any(t == final for _, t, _ in self._pending):
            raise UserInputError(f"{where}: named twice among this command's outputs")
        try:
            st = os.stat(final)
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise UserInputError(f"{where}: cannot write: {_reason(err)}") from None
        if st is not None and not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise UserInputError(f"{where}: cannot write: {kind}")
        parent = final.parent
        if not parent.is_dir():
            raise UserInputError(f"{where}: cannot write: folder {parent} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{final.name}.", suffix=final.suffix)
        except OSError as err:
            raise UserInputError(f"{where}: cannot write: {_reason(err)}") from None
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary open() would create it, not mkstemp's 0600
        self._pending.append((Path(tmp), final, field))
        return Path(tmp)

    def write(self, tmp: Path, produce: Callable[[Path], object]) -> None:
        """Run ``produce(tmp)``; a failed write (disk full, I/O error) is one UserInputError."""
        field, final = next((f, t) for p, t, f in self._pending if p == tmp)
        try:
            produce(tmp)
        except OSError as err:
            raise UserInputError(f"{field}: cannot write {final}: {_reason(err)}") from None

    def write_text(self, target: str | os.PathLike[str], text: str, *, field: str,
                   suffixes: Iterable[str] | None = None) -> Path:
        """Reserve ``target`` and write ``text`` (UTF-8) to its temporary; returns the target."""
        tmp = self.reserve(target, field=field, suffixes=suffixes)
        self.write(tmp, lambda p: p.write_text(text, encoding="utf-8"))
        return Path(target)

    def commit(self) -> None:
        """Rename every temporary into place (after all of them were written)."""
        pending, self._pending = self._pending, []
        for i, (tmp, final, field) in enumerate(pending):
            try:
                os.replace(tmp, final)
            except OSError as err:
                for rest, _, _ in pending[i:]:
                    rest.unlink(missing_ok=True)
                raise UserInputError(f"{field}: cannot write {final}: {_reason(err)}") from None

    def release(self, tmp: Path) -> None:
        """Give up one reserved output: its temporary is removed, its target left alone."""
        keep = [e for e in self._pending if e[0] != tmp]
        if len(keep) == len(self._pending):
            raise ValueError(f"{tmp} is not a reserved output")
        self._pending = keep
        tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove every temporary; no target is touched."""
        pending, self._pending = self._pending, []
        for tmp, _, _ in pending:
            tmp.unlink(missing_ok=True)


def make_out_dir(path: str | os.PathLike[str], *, field: str) -> Path:
    """The output folder ``path``, created with its parents; a file in the way is one error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{field}: {out}: cannot write: not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"{field}: {out}: cannot create: {_reason(err)}") from None
    return out
