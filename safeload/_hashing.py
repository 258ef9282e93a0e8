"""sha256 of files, computed while their bytes are copied, in parallel threads (hashlib releases the GIL)."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["CHUNK", "copy_and_hash", "hash_fd", "parallel", "progress_bar"]

CHUNK = 4 << 20  # large enough that hashlib drops the GIL and syscalls are amortised
T = TypeVar("T")
R = TypeVar("R")
Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


def hash_fd(fd: int, advance: Advance = _noop) -> tuple[str, int]:
    """Hash an open file from its current offset to the end; return ("sha256:<hex>", size)."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = os.readv(fd, [buf])
        if n == 0:
            break
        h.update(view[:n])
        size += n
        advance(n)
    return "sha256:" + h.hexdigest(), size


def copy_and_hash(src_fd: int, dst_fd: int, advance: Advance = _noop) -> tuple[str, int]:
    """Copy ``src_fd`` to ``dst_fd`` and hash exactly the bytes written; return ("sha256:<hex>", size)."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = os.readv(src_fd, [buf])
        if n == 0:
            break
        chunk = view[:n]
        h.update(chunk)
        written = 0
        while written < n:
            written += os.write(dst_fd, chunk[written:])
        size += n
        advance(n)
    return "sha256:" + h.hexdigest(), size


def parallel(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool; the first exception propagates after all finish."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    n = min(len(items), workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="safeload-hash") as pool:
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]


@contextmanager
def progress_bar(description: str, total: int, enabled: bool | None) -> Iterator[Advance]:
    """A rich progress bar on stderr when it is a terminal (or ``enabled``); yields ``advance(nbytes)``."""
    show = enabled if enabled is not None else sys.stderr.isatty()
    if not show or total <= 0:
        yield _noop
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance
