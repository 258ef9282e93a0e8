"""The store's hashing primitives against hashlib, on real files."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from safeload._trust import hashing as _hashing


def _expected(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_BLOCK = _hashing._COPY_BLOCK


@pytest.mark.parametrize("size", [0, 1, _BLOCK - 1, _BLOCK, 2 * _BLOCK, 3 * _BLOCK + 7, 25 * _BLOCK + 1])
def test_copy_and_hash_writes_exactly_what_it_hashes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    seen: list[int] = []
    s = os.open(src, os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.lseek(s, 5 if size > 5 else 0, os.SEEK_SET)  # a moved file offset must not shorten the copy
        digest, n = _hashing.copy_and_hash(s, d, seen.append)
    finally:
        os.close(s)
        os.close(d)
    assert (digest, n) == (_expected(data), size)
    assert (tmp_path / "dst").read_bytes() == data
    assert sum(seen) == size


@pytest.mark.parametrize("mapped", [True, False])
def test_hash_fd_matches_hashlib(tmp_path: Path, mapped: bool) -> None:
    data = os.urandom(_hashing.CHUNK + 123)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _hashing.hash_fd(fd, mapped=mapped) == (_expected(data), len(data))
    finally:
        os.close(fd)


def test_parallel_keeps_order_and_raises_after_all_finish() -> None:
    assert _hashing.parallel(lambda x: x * 2, [1, 2, 3, 4]) == [2, 4, 6, 8]
    done: list[int] = []

    def work(x: int) -> int:
        if x == 0:
            raise OSError("boom")
        done.append(x)
        return x

    with pytest.raises(OSError, match="boom"):
        _hashing.parallel(work, [0, 1, 2, 3])
    assert sorted(done) == [1, 2, 3]


def test_a_failing_write_stops_the_pipelined_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(8 * _BLOCK))
    s = os.open(src, os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDONLY | os.O_CREAT, 0o600)  # not writable: write fails
    try:
        with pytest.raises(OSError):
            _hashing.copy_and_hash(s, d)
    finally:
        os.close(s)
        os.close(d)
    assert not [t for t in threading.enumerate() if t.name == "safeload-hash-pipe"]


def _resident(path: Path) -> int:
    """Bytes of ``path`` in the page cache (util-linux fincore, i.e. mincore(2))."""
    import subprocess

    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


@pytest.mark.parametrize("size", [3 * _BLOCK + 7, 40 * _BLOCK + 3])  # the serial and the pipelined copy
def test_copy_and_hash_drops_the_source_from_the_page_cache(tmp_path: Path, size: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())  # dirty pages are never dropped; a written-back file is the normal case
    assert src.read_bytes()  # now cached
    assert _resident(src) >= size - 4096
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _hashing.copy_and_hash(s, d)
    finally:
        os.close(s)
        os.close(d)
    assert _resident(src) == 0, "the copied source still occupies the page cache"
    assert _resident(dst) >= size - 4096, "the copy itself should stay cached for the load that follows"
