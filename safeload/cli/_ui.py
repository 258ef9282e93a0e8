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


def _stdout_console() -> Console:
    if sys.stdout.isatty():
        return Console(highlight=False)
    # A pipe or a file: no colour, and wide enough that tensor names are not wrapped mid-word.
    width = max(120, int(os.environ.get("COLUMNS", "0") or 0))
    return Console(highlight=False, width=width, no_color=True)


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
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
            sys.stdout.flush()
        else:
            render(self.out)

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
