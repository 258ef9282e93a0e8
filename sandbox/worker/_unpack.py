"""Unpack mode: an OCI tar layer (plain or gzip) read and unpacked inside the jail (stdlib only).

The layer is the input (``--in``, a path or ``fd:N``), already hashed by the host against its
descriptor but still registry-controlled bytes. The job (``--job fd:N``, a sealed memfd of JSON) says
which members to write and the budgets:

``{"version": 1, "gzip": bool, "compressed_size": int, "wanted": [names] | null, "list": bool,
"max_member_bytes": int, "max_total_bytes": int, "max_members": int, "max_ratio": int}``

Only plain files and folders are accepted. A sparse member of any flavour (GNU type ``S``, PAX
``GNU.sparse.*`` records of formats 0.0, 0.1 and 1.0), a link, a device, a FIFO, a contiguous file or
anything else refuses the whole layer; so does a name that is not a relative path inside the artifact, a
name twice, or a budget passed: members (every header counts), bytes written (each member and in total,
counted as they are written, never taken from a header), and the tar stream's size against the
compressed layer's (``max_ratio``; that ends a gzip bomb even in members that are skipped).

Members in ``wanted`` (every regular member when it is null) are written to ``<out>/<n>``, numbered in
the order they are met: a member's name never becomes a path. ``<out>/result.json`` is
``{"version": 1, "ok": true, "files": [{"name", "out", "size"}], "names": [...] (with "list"),
"members": n, "written": bytes, "stream": bytes}`` or, for a refused layer (after every file written is
removed), ``{"version": 1, "ok": false, "kind": "refused" | "budget", "budget": key | null,
"message": "..."}``. Refusals are the registry's doing and end the run with exit 0.
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import zlib

from ._common import open_input

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

_BLOCK = 1 << 20
_MAX_NAME = 1024
# A tar of a few small files is mostly headers and padding and compresses far better than its
# contents: the ratio budget only counts past this many bytes of tar stream.
RATIO_FLOOR = 1 << 20
_PLAIN = (tarfile.REGTYPE, tarfile.AREGTYPE)


class Refused(Exception):
    def __init__(self, kind: str, message: str, budget: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.budget = budget


class _Counted:
    """The tar stream, counted as tarfile reads it; stops at the first byte past ``limit``."""

    def __init__(self, raw: BinaryIO, limit: int, ratio: int) -> None:
        self._raw = raw
        self._limit = limit
        self._ratio = ratio
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._limit + 1 - self.count
        data = self._raw.read(max(0, min(n, self._limit + 1 - self.count)))
        self.count += len(data)
        if self.count > self._limit:
            raise Refused(
                "budget",
                f"the layer unpacks to more than {self._ratio} times its compressed size (a compression "
                "bomb)",
                "max_unpack_ratio",
            )
        return data


def _safe_name(name: str) -> bool:
    return (
        0 < len(name) <= _MAX_NAME
        and not name.startswith("/")
        and "\\" not in name
        and "\0" not in name
        and all(p not in {"", ".", ".."} for p in name.split("/"))
    )


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "a link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    return f"an entry of type {member.type!r}"


def _sparse(member: tarfile.TarInfo) -> bool:
    return (
        member.type == tarfile.GNUTYPE_SPARSE
        or member.sparse is not None
        or any(str(key).startswith("GNU.sparse") for key in member.pax_headers)
    )


def _write(out_dir: str, number: int, src: BinaryIO, name: str, cap: int, room: int) -> int:
    """Copy ``src`` to ``<out_dir>/<number>``, counting every byte: refused past ``cap`` (the member's
    budget) or ``room`` (what is left of the total)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(os.path.join(out_dir, str(number)), flags, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(_BLOCK):
            if written + len(chunk) > cap:
                raise Refused(
                    "budget", f"{name!r} holds more than the {cap} bytes a file may have", "max_file_size"
                )
            if written + len(chunk) > room:
                raise Refused("budget", "the layer's files hold more bytes than allowed", "max_unpacked")
            out.write(chunk)
            written += len(chunk)
    return written


def unpack(spec: dict[str, Any], source: BinaryIO, out_dir: str) -> dict[str, object]:
    ratio = int(spec["max_ratio"])
    stream = _Counted(source, ratio * int(spec["compressed_size"]) + RATIO_FLOOR, ratio)
    wanted_list = spec.get("wanted")
    wanted = None if wanted_list is None else set(wanted_list)
    listing = bool(spec.get("list"))
    max_members = int(spec["max_members"])
    member_cap = int(spec["max_member_bytes"])
    total_cap = int(spec["max_total_bytes"])
    files: list[dict[str, object]] = []
    names: list[str] = []
    seen: set[str] = set()
    members = written = 0
    tar = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]
    while (member := tar.next()) is not None:
        tar.members.clear()  # the stream is read once; keep no headers
        members += 1
        if members > max_members:
            raise Refused("budget", f"the layer holds more than {max_members} entries", "max_unpacked_files")
        shown = member.name[:200]
        if _sparse(member):
            raise Refused("refused", f"{shown!r} is a sparse file; only plain files and folders are unpacked")
        name = member.name.removeprefix("./")
        if member.isdir():
            if name and not _safe_name(name):
                raise Refused("refused", f"a folder named {shown!r}, which is not a relative path")
            continue
        if member.type not in _PLAIN:
            raise Refused(
                "refused", f"{shown!r} is {_kind(member)}; only plain files and folders are unpacked"
            )
        if not _safe_name(name):
            raise Refused("refused", f"{shown!r} is not a relative path inside the artifact")
        if name in seen:
            raise Refused("refused", f"{shown!r} is in the layer twice")
        seen.add(name)
        if listing:
            names.append(name)
        if wanted is not None and name not in wanted:
            continue  # skipped: tarfile reads past its data, counted against the ratio
        if member.size > member_cap:
            raise Refused(
                "budget", f"{shown!r} is {member.size} bytes, over the {member_cap} a file may have",
                "max_file_size",
            )
        src = tar.extractfile(member)
        if src is None:  # not reachable for a plain file
            raise Refused("refused", f"{shown!r} cannot be read")
        number = len(files)
        size = _write(out_dir, number, src, name, member_cap, total_cap - written)
        if size != member.size:
            raise Refused("refused", f"the layer ends inside {shown!r}")
        written += size
        files.append({"name": name, "out": str(number), "size": size})
    result: dict[str, object] = {
        "version": 1, "ok": True, "files": files, "members": members, "written": written,
        "stream": stream.count,
    }
    if listing:
        result["names"] = names
    return result


def _clean(out_dir: str) -> None:
    for entry in os.listdir(out_dir):
        if entry.isdigit():
            try:
                os.unlink(os.path.join(out_dir, entry))
            except OSError:
                pass


def main(job_spec: str, layer_spec: str, out_dir: str) -> int:
    with os.fdopen(open_input(job_spec), "rb") as fh:
        spec = json.loads(fh.read(16 << 20))
    if spec.get("version") != 1:
        raise ValueError("unknown unpack job version")
    result: dict[str, object]
    with os.fdopen(open_input(layer_spec), "rb") as raw:
        try:
            if spec.get("gzip"):
                with gzip.GzipFile(fileobj=raw) as source:
                    result = unpack(spec, source, out_dir)  # type: ignore[arg-type]
            else:
                result = unpack(spec, raw, out_dir)
        except Refused as exc:
            _clean(out_dir)
            result = {"version": 1, "ok": False, "kind": exc.kind, "budget": exc.budget, "message": str(exc)}
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
            _clean(out_dir)
            result = {
                "version": 1, "ok": False, "kind": "refused", "budget": None,
                "message": f"not a readable tar: {type(exc).__name__}: {exc}"[:2000],
            }
        except Exception as exc:
            if type(exc).__name__ != "error":  # zlib.error: a corrupt deflate stream
                raise
            _clean(out_dir)
            result = {
                "version": 1, "ok": False, "kind": "refused", "budget": None,
                "message": f"not a readable gzip stream: {exc}"[:2000],
            }
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(os.path.join(out_dir, "result.json"), flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(result, out)
    return 0
