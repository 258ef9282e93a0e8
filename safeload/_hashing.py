"""sha256 of files copied into the store, in parallel threads (hashlib releases the GIL)."""

from __future__ import annotations

import hashlib
import mmap
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["CHUNK", "copy_and_hash", "hash_fd", "parallel", "progress_bar"]

CHUNK = 16 << 20  # large enough that hashlib drops the GIL and per-chunk costs vanish
T = TypeVar("T")
R = TypeVar("R")
Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


def hash_fd(fd: int, advance: Advance = _noop, *, mapped: bool = True) -> tuple[str, int]:
    """Hash a whole regular file; return ("sha256:<hex>", size).

    The file is mapped rather than read, so the bytes go from the page cache to the hash without a copy.
    Map only files nobody else can write (a file truncated under the mapping faults the process): the
    caller's private staging copies. ``mapped=False`` reads instead.
    """
    size = os.fstat(fd).st_size
    h = hashlib.sha256()
    if size == 0:
        return "sha256:" + h.hexdigest(), 0
    if not mapped:
        return _read_and_hash(fd, advance)
    try:
        mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return _read_and_hash(fd, advance)
    with mapping, memoryview(mapping) as view:
        for off in range(0, size, CHUNK):
            with view[off : off + CHUNK] as part:
                h.update(part)
            advance(min(CHUNK, size - off))
    return "sha256:" + h.hexdigest(), size


def _read_and_hash(fd: int, advance: Advance) -> tuple[str, int]:
    os.lseek(fd, 0, os.SEEK_SET)
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


# Small enough that the block is still in the core's cache when it is written out after hashing: one
# pass over memory instead of a kernel copy followed by a second, cold read for the hash.
_COPY_BLOCK = 1 << 20


def copy_and_hash(src_fd: int, dst_fd: int, advance: Advance = _noop) -> tuple[str, int]:
    """Copy ``src_fd`` to ``dst_fd`` and hash what is written; return ("sha256:<hex>", size).

    Each block is read once into private memory, hashed there and written from there: the digest is of
    exactly the bytes the destination receives, whatever happens to the source meanwhile.
    """
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_COPY_BLOCK)
    view = memoryview(buf)
    os.lseek(src_fd, 0, os.SEEK_SET)
    while n := os.readv(src_fd, [buf]):
        block = view[:n]
        h.update(block)
        written = 0
        while written < n:
            written += os.write(dst_fd, block[written:])
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
