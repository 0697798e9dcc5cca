"""Progress of a long command (a layout's solve, the planner's MIP) on stderr, on a terminal only.

A spinner, what the command is doing and the time elapsed, drawn by rich on stderr while the
work runs and erased when it ends. Nothing is drawn when stderr is not a terminal (a pipe, a
file, a test's capture) or ``TERM=dumb``: output that a program reads stays exactly what it was.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any, TextIO


def wants_progress(stream: Any) -> bool:
    """Whether progress is drawn on ``stream``: a terminal, and TERM is not ``dumb``."""
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


class Progress:
    """``with Progress("laying out 1,234 buffers") as p: ... p.update("replaying")``."""

    def __init__(self, what: str, *, stream: TextIO | None = None):
        self._what = what
        self._stream = sys.stderr if stream is None else stream
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if wants_progress(self._stream):
            from rich.console import Console
            from rich.progress import Progress as Bar
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            # stdout is left alone: a table printed after ``stop`` goes where it always went
            self._bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=Console(file=self._stream), transient=True,
                            redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
            self._task = self._bar.add_task(self._what, total=None)
        return self

    def update(self, what: str) -> None:
        """Say what the command does now (drawn at once: a phase shorter than rich's refresh
        period would otherwise never show)."""
        if self._bar is not None:
            self._bar.update(self._task, description=what, refresh=True)

    def stop(self) -> None:
        """Erase the line (before the command prints its result); again is a no-op."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
