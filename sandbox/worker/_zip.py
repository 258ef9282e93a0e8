"""A strict ZIP reader: the central directory is the truth, and everything else must agree with it.

``zipfile`` is lenient in ways an attacker can use (it trusts local headers for some fields, tolerates
duplicate names, prepended data and overlapping members), so the archive is parsed here by hand. Members
must be stored or deflated, unencrypted, with unique names, local headers and data descriptors that agree
with the central directory, and byte ranges that do not overlap.
"""

from __future__ import annotations

import itertools
import mmap
import struct
import zlib

from ._common import FormatError, LimitError

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Member", "ZipArchive", "is_zip"]

_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD64_LOC = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_CDH = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LFH = struct.Struct("<4sHHHHHIIIHH")
_MAX_MEMBERS = 10_000_000


class Member:
    """One archive member, as the central directory and its local header agree it is.

    A plain class: ``dataclasses`` costs the jailed worker milliseconds of start-up (see ``Budgets``).
    """

    __slots__ = ("compressed_size", "crc", "data_offset", "method", "name", "size")

    def __init__(
        self, name: str, method: int, crc: int, compressed_size: int, size: int, data_offset: int
    ) -> None:
        self.name = name
        self.method = method  # 0 stored, 8 deflated
        self.crc = crc
        self.compressed_size = compressed_size
        self.size = size
        self.data_offset = data_offset  # absolute offset of the member's (possibly compressed) bytes


def is_zip(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + n]
        if len(body) != n:
            raise FormatError("zip extra field is truncated")
        if tag == 1:
            fields = []
            for value in (usize, csize, offset):
                if value == 0xFFFFFFFF:
                    fields.append(True)
                else:
                    fields.append(False)
            vals = [usize, csize, offset]
            k = 0
            for i, need in enumerate(fields):
                if need:
                    if k + 8 > len(body):
                        raise FormatError("zip64 extra field is truncated")
                    vals[i] = struct.unpack_from("<Q", body, k)[0]
                    k += 8
            return vals[0], vals[1], vals[2]
        pos += 4 + n
    return usize, csize, offset


class ZipArchive:
    """The members of a ZIP file mapped in memory, validated up front."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.members: dict[str, Member] = {}
        self._parse()

    def _parse(self) -> None:
        data = self.data
        size = len(data)
        tail_start = max(0, size - (0xFFFF + _EOCD.size))
        tail = bytes(data[tail_start:size])
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            raise FormatError("zip end-of-central-directory record not found")
        eocd_pos = tail_start + at
        _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment_len = _EOCD.unpack_from(tail, at)
        if eocd_pos + _EOCD.size + comment_len != size:
            raise FormatError("zip has data after its end-of-central-directory record")
        if disk != 0 or cd_disk != 0 or n_disk != n_total:
            raise FormatError("multi-disk zip archives are not supported")
        cd_end = eocd_pos
        loc_pos = eocd_pos - _EOCD64_LOC.size
        if loc_pos >= 0 and bytes(data[loc_pos : loc_pos + 4]) == b"PK\x06\x07":
            _, _, eocd64_pos, _ = _EOCD64_LOC.unpack_from(bytes(data[loc_pos:eocd_pos]), 0)
            if eocd64_pos + _EOCD64.size > loc_pos:
                raise FormatError("zip64 end-of-central-directory record is out of place")
            rec = _EOCD64.unpack_from(bytes(data[eocd64_pos : eocd64_pos + _EOCD64.size]), 0)
            if rec[0] != b"PK\x06\x06":
                raise FormatError("zip64 end-of-central-directory record is malformed")
            n_total, cd_size, cd_offset = rec[7], rec[8], rec[9]
            cd_end = eocd64_pos
        if cd_offset + cd_size != cd_end:
            raise FormatError("zip central directory does not end where the archive says (prepended data?)")
        if n_total > _MAX_MEMBERS:
            raise LimitError(f"zip has more than {_MAX_MEMBERS} members")
        cd = bytes(data[cd_offset:cd_end])
        pos = 0
        spans: list[tuple[int, int, str]] = []
        for _ in range(n_total):
            if pos + _CDH.size > len(cd):
                raise FormatError("zip central directory is truncated")
            (sig, _vm, _vn, flags, method, _t, _d, crc, csize, usize, nlen, elen, clen, _ds, _ia, _ea,
             lh_off) = _CDH.unpack_from(cd, pos)
            if sig != b"PK\x01\x02":
                raise FormatError("zip central directory entry has a bad signature")
            raw_name = cd[pos + _CDH.size : pos + _CDH.size + nlen]
            extra = cd[pos + _CDH.size + nlen : pos + _CDH.size + nlen + elen]
            pos += _CDH.size + nlen + elen + clen
            if pos > len(cd):
                raise FormatError("zip central directory is truncated")
            usize, csize, lh_off = _zip64_extra(extra, usize, csize, lh_off)
            if flags & 0x1 or flags & 0x40:
                raise FormatError("zip member is encrypted")
            if method not in (0, 8):
                raise FormatError(f"zip member uses compression method {method}; only stored and deflate")
            if method == 0 and csize != usize:
                raise FormatError("stored zip member has different compressed and plain sizes")
            try:
                name = raw_name.decode("utf-8") if flags & 0x800 else raw_name.decode("cp437")
            except UnicodeDecodeError:
                raise FormatError("zip member name is not valid UTF-8") from None
            if name in self.members:
                raise FormatError(f"zip has two members named {name!r}")
            data_offset, end = self._check_local(
                lh_off, raw_name, flags, method, crc, csize, usize, cd_offset
            )
            self.members[name] = Member(name, method, crc, csize, usize, data_offset)
            spans.append((lh_off, end, name))
        if pos != len(cd):
            raise FormatError("zip central directory has trailing bytes")
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
            if start_b < end_a:
                raise FormatError(f"zip members {a!r} and {b!r} overlap")

    def _check_local(
        self, off: int, raw_name: bytes, flags: int, method: int, crc: int, csize: int, usize: int,
        cd_offset: int,
    ) -> tuple[int, int]:
        data = self.data
        if off + _LFH.size > cd_offset:
            raise FormatError("zip local header lies outside the member area")
        sig, _v, lflags, lmethod, _t, _d, lcrc, lcsize, lusize, nlen, elen = _LFH.unpack_from(
            bytes(data[off : off + _LFH.size]), 0
        )
        if sig != b"PK\x03\x04":
            raise FormatError("zip local header has a bad signature")
        if bytes(data[off + _LFH.size : off + _LFH.size + nlen]) != raw_name:
            raise FormatError("zip local header names a different file than the central directory")
        if lflags != flags or lmethod != method:
            raise FormatError("zip local header disagrees with the central directory (flags or method)")
        data_offset = off + _LFH.size + nlen + elen
        end = data_offset + csize
        if end > cd_offset:
            raise FormatError("zip member data runs into the central directory")
        if flags & 0x8:
            if (lcrc, lcsize, lusize) != (0, 0, 0) and (lcrc, lcsize, lusize) != (crc, csize, usize):
                raise FormatError("zip local header disagrees with the central directory (sizes or CRC)")
            end = self._check_descriptor(end, crc, csize, usize, cd_offset)
        elif lcrc != crc or (lcsize, lusize) not in ((csize, usize), (0xFFFFFFFF, 0xFFFFFFFF)):
            raise FormatError("zip local header disagrees with the central directory (sizes or CRC)")
        return data_offset, end

    def _check_descriptor(self, at: int, crc: int, csize: int, usize: int, limit: int) -> int:
        raw = bytes(self.data[at : min(at + 24, limit)])
        candidates = []
        if raw[:4] == b"PK\x07\x08":
            candidates += [(raw[4:16], "<III", 16), (raw[4:24], "<IQQ", 24)]
        candidates += [(raw[:12], "<III", 12), (raw[:20], "<IQQ", 20)]
        for body, fmt, n in candidates:
            if len(body) == struct.calcsize(fmt) and struct.unpack(fmt, body) == (crc, csize, usize):
                return at + n
        raise FormatError("zip data descriptor disagrees with the central directory")

    def names(self) -> Iterator[str]:
        return iter(self.members)

    def read(self, name: str, limit: int) -> bytes:
        """The plain bytes of a member, CRC-checked, refused if longer than ``limit``."""
        m = self.members[name]
        if m.size > limit:
            raise LimitError(f"zip member {name!r} is {m.size} bytes, over the {limit}-byte budget")
        raw = bytes(self.data[m.data_offset : m.data_offset + m.compressed_size])
        if m.method == 8:
            d = zlib.decompressobj(-15)
            try:
                out = d.decompress(raw, m.size + 1)
            except zlib.error as exc:
                raise FormatError(f"zip member {name!r} does not inflate: {exc}") from None
            if len(out) != m.size or d.unconsumed_tail or not d.eof:
                raise FormatError(f"zip member {name!r} inflates to a different size than recorded")
        else:
            out = raw
        if zlib.crc32(out) != m.crc:
            raise FormatError(f"zip member {name!r} fails its CRC check")
        return out

    def stream(self, name: str, chunk: int = 1 << 22) -> Iterator[bytes]:
        """The plain bytes of a member in chunks, size- and CRC-checked at the end."""
        m = self.members[name]
        crc = 0
        total = 0
        d = zlib.decompressobj(-15) if m.method == 8 else None
        pos, end = m.data_offset, m.data_offset + m.compressed_size
        while pos < end or (d is not None and d.unconsumed_tail):
            if d is not None and d.unconsumed_tail:
                piece = d.unconsumed_tail
            else:
                piece = bytes(self.data[pos : min(end, pos + chunk)])
                pos += len(piece)
            if d is not None:
                try:
                    out = d.decompress(piece, chunk)
                except zlib.error as exc:
                    raise FormatError(f"zip member {name!r} does not inflate: {exc}") from None
            else:
                out = piece
            total += len(out)
            if total > m.size:
                raise FormatError(f"zip member {name!r} inflates past its recorded size")
            crc = zlib.crc32(out, crc)
            yield out
        if d is not None and not d.eof:
            raise FormatError(f"zip member {name!r} is truncated")
        if total != m.size or crc != m.crc:
            raise FormatError(f"zip member {name!r} fails its size or CRC check")
