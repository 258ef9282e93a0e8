"""Output for the command line: human tables on stdout, ``--json`` for machines, progress on stderr.

Progress bars appear only when stderr is a terminal, so logs and CI output stay quiet. Everything a
command reports goes through :class:`UI.emit`, which prints either the JSON document or the rendering.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["EXIT_ERROR", "EXIT_FINDING", "EXIT_OK", "UI", "ProgressSink"]

EXIT_OK = 0
EXIT_FINDING = 1  # the command worked and the answer is "no": code found, tampering found, load refused
EXIT_ERROR = 2  # the command could not do its job: bad arguments, unreadable input, no sandbox, ...


class _Console(Console):
    """rich's console, except that a reader going away early (``| head``) ends the output quietly
    instead of exiting with status 1: the command's exit code stays its verdict."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _drop_stdout()


def _stdout_console() -> Console:
    if sys.stdout.isatty():
        return _Console(highlight=False)
    # A pipe or a log: no colour and no wrapping, so that a digest, a path or a tensor name stays on one
    # line for grep; tables get all the width their widest cell needs.
    width = max(_UNWRAPPED_WIDTH, int(os.environ.get("COLUMNS", "0") or 0))
    return _Console(highlight=False, width=width, no_color=True, soft_wrap=True)


_UNWRAPPED_WIDTH = 4096


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that nothing more (nor the interpreter's flush at exit) fails."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


class ProgressSink:
    """A callback ``(label, done, total)`` that drives one rich bar per label; silent off a terminal.

    ``done`` and ``total`` are byte counts (``total`` may be ``None`` when unknown). The library's fetch,
    hash and convert steps report through a callable of this shape.
    """

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, label: str, done: int, total: int | None = None) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(label)
        if task is None:
            task = self._progress.add_task(label, total=total)
            self._tasks[label] = task
        self._progress.update(task, completed=done, total=total)


@dataclass
class UI:
    """Where a command's results go. ``json_mode`` prints one JSON document on stdout instead of text."""

    json_mode: bool = False
    out: Console = field(default_factory=_stdout_console)
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, soft_wrap=True))

    @property
    def interactive(self) -> bool:
        return sys.stderr.isatty()

    def emit(self, data: Any, render: Callable[[Console], None]) -> None:
        """Print the JSON document or the rendering. A reader that goes away early (``| head``) is not
        an error: the rest of the output is dropped and the command's exit code stays its verdict."""
        try:
            if self.json_mode:
                sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
            else:
                render(self.out)
            sys.stdout.flush()
        except BrokenPipeError:
            _drop_stdout()


    def note(self, message: str) -> None:
        """A line for humans on stderr (never mixed into ``--json`` output on stdout)."""
        if not self.json_mode:
            self.err.print(message, markup=False)

    def error(self, message: str) -> None:
        """The one-line error format every command uses (also in ``--json`` mode, on stderr)."""
        print(f"safeload: error: {message}", file=sys.stderr)

    @contextmanager
    def progress(self) -> Iterator[ProgressSink]:
        if not self.interactive:
            yield ProgressSink(None)
            return
        bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        )
        with bars:
            yield ProgressSink(bars)
