"""sha256 of files copied into the store, in parallel threads (hashlib releases the GIL)."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

__all__ = ["CHUNK", "Hashed", "copy_and_hash", "hash_fd", "parallel", "progress_bar"]

CHUNK = 16 << 20  # large enough that hashlib drops the GIL and per-chunk costs vanish
T = TypeVar("T")
R = TypeVar("R")
Advance = Callable[[int], None]


def _noop(_: int) -> None:
    return None


class Hashed(NamedTuple):
    """What hashing a file found: its ``sha256:<hex>`` digest and its size in bytes."""

    digest: str
    size: int


def hash_fd(fd: int, advance: Advance = _noop, *, mapped: bool = True) -> Hashed:
    """Hash a whole regular file; return its digest and size.

    The file is mapped rather than read, so the bytes go from the page cache to the hash without a copy.
    Map only files nobody else can write (a file truncated under the mapping faults the process): the
    caller's private staging copies. ``mapped=False`` reads instead.
    """
    size = os.fstat(fd).st_size
    h = hashlib.sha256()
    if size == 0:
        return Hashed("sha256:" + h.hexdigest(), 0)
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
    return Hashed("sha256:" + h.hexdigest(), size)


def _read_and_hash(fd: int, advance: Advance) -> Hashed:
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
    return Hashed("sha256:" + h.hexdigest(), size)


# Small enough that a block is still in the core's cache when it is hashed and written; a few of them in
# flight let the hash run on one core while the copy runs on another.
_COPY_BLOCK = 1 << 20
_IN_FLIGHT = 4
_DROP_EVERY = 8 << 20  # source bytes copied between two page-cache drops
_active = 0  # copies running in this process
_active_lock = threading.Lock()


def copy_and_hash(src_fd: int, dst_fd: int, advance: Advance = _noop) -> Hashed:
    """Copy ``src_fd`` to ``dst_fd`` and hash what is written; return its digest and size.

    Each block is read once into private memory and then hashed and written from there: the digest is
    of exactly the bytes the destination receives, whatever happens to the source meanwhile. Files of
    more than a couple of blocks are hashed on a second thread while the calling thread copies.

    The source's clean, unmapped pages are dropped from the page cache behind the copy: from then on the
    copy is what gets read, so the cache holds the file once rather than twice, and the pages just freed
    are the ones the copy's own pages are taken from (on VMs that hand freed memory back to the
    hypervisor, pages that sat free for long cost a fault on the host each; these do not).
    """
    os.lseek(src_fd, 0, os.SEEK_SET)
    global _active
    with _active_lock:
        _active += 1
        # A second thread per copy only pays while cores are idle: with a copy per core already running
        # (several files in parallel), handing blocks between threads is pure overhead.
        pipelined = _active * 2 <= (os.cpu_count() or 1)
    try:
        if pipelined and os.fstat(src_fd).st_size > 2 * _COPY_BLOCK:
            return _copy_and_hash_pipelined(src_fd, dst_fd, advance)
        return _copy_and_hash_serial(src_fd, dst_fd, advance)
    finally:
        with _active_lock:
            _active -= 1


class _SourceDropper:
    """Drops the already-copied part of a source file from the page cache, every ``_DROP_EVERY`` bytes.

    POSIX_FADV_DONTNEED leaves dirty and mapped pages alone, so nothing anyone still uses is lost; it is
    only advice, and filesystems that cannot honour it (or descriptors that are not files) are skipped.
    """

    __slots__ = ("_done", "_dropped", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._done = 0
        self._dropped = 0

    def copied(self, n: int) -> None:
        self._done += n
        if self._done - self._dropped >= _DROP_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._done > self._dropped:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, self._dropped, self._done - self._dropped, os.POSIX_FADV_DONTNEED)
            self._dropped = self._done


def _write_all(fd: int, block: memoryview) -> None:
    written = 0
    while written < len(block):
        written += os.write(fd, block[written:])


def _copy_and_hash_serial(src_fd: int, dst_fd: int, advance: Advance) -> Hashed:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_COPY_BLOCK)
    view = memoryview(buf)
    dropper = _SourceDropper(src_fd)
    while n := os.readv(src_fd, [buf]):
        h.update(view[:n])
        _write_all(dst_fd, view[:n])
        dropper.copied(n)
        size += n
        advance(n)
    dropper.flush()
    return Hashed("sha256:" + h.hexdigest(), size)


def _copy_and_hash_pipelined(src_fd: int, dst_fd: int, advance: Advance) -> Hashed:
    # A buffer goes back to ``free`` only from the hashing thread, after its hash; by then this thread
    # has written it too (it writes each block before reading the next), so no buffer is refilled
    # while either use is pending and the bytes hashed are the bytes written.
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(_IN_FLIGHT):
        free.put(bytearray(_COPY_BLOCK))
    work: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
    h = hashlib.sha256()
    failed: list[BaseException] = []

    def hasher() -> None:
        try:
            while (item := work.get()) is not None:
                buf, n = item
                with memoryview(buf) as view:
                    h.update(view[:n])
                free.put(buf)
        except BaseException as exc:  # reported by the copying thread
            failed.append(exc)
            free.put(bytearray(_COPY_BLOCK))

    thread = threading.Thread(target=hasher, name="safeload-hash-pipe", daemon=True)
    thread.start()
    size = 0
    dropper = _SourceDropper(src_fd)
    try:
        while not failed:
            buf = free.get()
            n = os.readv(src_fd, [buf])
            if n == 0:
                free.put(buf)
                break
            work.put((buf, n))
            with memoryview(buf) as view:
                _write_all(dst_fd, view[:n])
            dropper.copied(n)
            size += n
            advance(n)
    finally:
        work.put(None)
        thread.join()
    dropper.flush()
    if failed:
        raise failed[0]
    return Hashed("sha256:" + h.hexdigest(), size)


def parallel(fn: Callable[[T], R], items: Sequence[T], *, workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool; the first exception propagates after all finish."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    n = min(len(items), workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="safeload-hash") as pool:
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool | None) -> Iterator[Advance]:
    """A rich progress bar on stderr when it is a terminal (or ``enabled``); yields ``advance(nbytes)``.

    ``total`` None: the size is not known up front (a download), so the bar counts bytes and speed only.
    """
    show = enabled if enabled is not None else sys.stderr.isatty()
    if not show or (total is not None and total <= 0):
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
