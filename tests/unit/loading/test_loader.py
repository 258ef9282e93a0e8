"""The loader's handling of its input: opened once, and immutable once handed to the jail."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from safeload._loading.loader import _open_source
from safeload.policy import Policy


def test_file_objects_become_sealed_memory_files() -> None:
    buf = io.BytesIO(b"head" + b"payload")
    buf.seek(4)
    fd, _ = _open_source(buf, Policy())
    try:
        assert os.pread(fd, 100, 0) == b"payload"
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"X", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 1)
    finally:
        os.close(fd)


def test_paths_open_read_only_and_must_be_regular(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd, _ = _open_source(tmp_path / "f", Policy())
    try:
        with pytest.raises(OSError):
            os.write(fd, b"y")
    finally:
        os.close(fd)
    with pytest.raises(IsADirectoryError):
        _open_source(tmp_path, Policy())
    with pytest.raises(TypeError):
        _open_source(123, Policy())  # type: ignore[arg-type]
