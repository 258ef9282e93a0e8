"""The worker's strict ZIP reader refuses the tricks lenient readers accept."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
import torch

from safeload._sandbox.worker._common import FormatError
from safeload._sandbox.worker._zip import ZipArchive


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_reads_stored_and_deflated_members() -> None:
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        z = ZipArchive(_zip({"a/x": b"hello" * 100, "a/y": b""}, compression))
        assert z.read("a/x", 1 << 20) == b"hello" * 100
        assert b"".join(z.stream("a/x", chunk=7)) == b"hello" * 100
        assert z.read("a/y", 10) == b""


def test_reads_torch_archives_with_data_descriptors() -> None:
    buf = io.BytesIO()
    torch.save({"t": torch.arange(10)}, buf)
    z = ZipArchive(buf.getvalue())
    member = z.members["archive/data/0"]
    assert member.method == 0 and member.data_offset % 64 == 0 and member.size == 80


def test_duplicate_names_are_refused() -> None:
    data = _zip({"a": b"1", "b": b"2"})
    data = data.replace(b"b", b"a")  # both local and central names become "a"
    with pytest.raises(FormatError):
        ZipArchive(data)


def test_central_directory_disagreeing_with_local_header_is_refused() -> None:
    data = bytearray(_zip({"name.pkl": b"payload"}))
    local = data.index(b"name.pkl")
    data[local : local + 8] = b"evil.pkl"  # only the local header is renamed
    with pytest.raises(FormatError, match="local header"):
        ZipArchive(bytes(data))


def test_encrypted_flag_is_refused() -> None:
    data = bytearray(_zip({"a": b"x"}))
    central = data.index(b"PK\x01\x02")
    flags = struct.unpack_from("<H", data, central + 8)[0]
    struct.pack_into("<H", data, central + 8, flags | 1)
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<H", data, local + 6, flags | 1)
    with pytest.raises(FormatError, match="encrypted"):
        ZipArchive(bytes(data))


def test_bad_crc_is_refused_on_read() -> None:
    data = bytearray(_zip({"a": b"abcdef"}))
    data[data.index(b"abcdef")] = ord("X")
    z = ZipArchive(bytes(data))
    with pytest.raises(FormatError, match="CRC"):
        z.read("a", 100)


def test_prepended_bytes_are_refused() -> None:
    with pytest.raises(FormatError):
        ZipArchive(b"#!/bin/sh\n" + _zip({"a": b"x"}))


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(FormatError):
        ZipArchive(_zip({"a": b"x"}) + b"junk")


def test_overlapping_members_are_refused() -> None:
    data = bytearray(_zip({"a": b"x" * 50, "b": b"y" * 50}))
    # Point the second central entry at the first member's local header (a classic zip-bomb overlap).
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    struct.pack_into("<I", data, second + 42, 0)
    with pytest.raises(FormatError):
        ZipArchive(bytes(data))


def test_deflate_bomb_is_refused_by_recorded_size() -> None:
    data = _zip({"a": b"\x00" * (1 << 20)}, zipfile.ZIP_DEFLATED)
    z = ZipArchive(data)
    from safeload._sandbox.worker._common import LimitError

    with pytest.raises(LimitError):
        z.read("a", 1000)
