"""Errors, budgets and name checks shared by the worker's parsers (standard library only).

The host imports the budget constants and the checks too, so that it validates a manifest against exactly
the rules the worker enforced while writing it. Nothing here imports ``re`` or ``json``: together they
cost the jail ~10 ms of its 50 ms start-up.
"""

from __future__ import annotations

import _json
import os

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "EXIT_CRASH",
    "EXIT_FORMAT",
    "EXIT_LIMIT",
    "MAX_DEPTH",
    "MAX_NAME",
    "MAX_NODES",
    "NP_DTYPES",
    "Budgets",
    "EncodingError",
    "FormatError",
    "LimitError",
    "dumps",
    "is_attribute",
    "is_location",
    "is_np_dtype",
    "open_input",
    "write_error",
    "write_json",
    "write_u8_safetensors",
]

def open_input(spec: str) -> int:
    """A new descriptor for the artifact, at offset 0: ``fd:N`` names one the launcher handed in (the
    jails without a fresh ``/proc`` have no path to it), anything else is a path."""
    if spec.startswith("fd:"):
        fd = os.dup(int(spec[3:]))
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    return os.open(spec, os.O_RDONLY | os.O_CLOEXEC)


# Nesting depth of the object tree a checkpoint may describe; the host rebuilds it recursively, so this
# stays well under Python's default recursion limit.
MAX_DEPTH = 200
# Objects (containers, scalars, tensors, stubs) in one manifest.
MAX_NODES = 5_000_000

_DIGITS = frozenset("0123456789")
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_REST = _NAME_FIRST | _DIGITS
_LOCATION_CHARS = _NAME_REST | frozenset(".-")


def is_location(s: str) -> bool:
    """A storage location or device string: ``cpu``, ``cuda:0``, ``mps``, ... (name up to 32 characters
    of ``[A-Za-z0-9_.-]``, optionally ``:`` and up to 6 digits)."""
    name, colon, index = s.partition(":")
    return (
        0 < len(name) <= 32
        and _LOCATION_CHARS.issuperset(name)
        and (not colon or (0 < len(index) <= 6 and _DIGITS.issuperset(index)))
    )


def is_attribute(s: str) -> bool:
    """An attribute name an OrderedDict or argparse.Namespace may carry: an ASCII identifier of up to 128
    characters that is not a dunder (the host also refuses names of the class's own attributes)."""
    return (
        0 < len(s) <= 128 and s[0] in _NAME_FIRST and _NAME_REST.issuperset(s) and not s.startswith("__")
    )


# Longest module or global name a stub may record.
MAX_NAME = 1024
# The numpy dtypes (``dtype.str``) that the host rebuilds as numeric arrays.
NP_DTYPES = frozenset(
    ["|b1", "|i1", "|u1"]
    + [f"{order}{kind}{size}" for order in "<>" for kind in "iuf" for size in (2, 4, 8)]
    + [f"{order}c{size}" for order in "<>" for size in (8, 16)]
)


def is_np_dtype(s: str) -> bool:
    """Whether ``s`` is the ``dtype.str`` of a numeric numpy dtype the host rebuilds as an array."""
    return s in NP_DTYPES


def _unencodable(obj: object) -> object:
    raise TypeError(f"{type(obj).__name__} cannot be written as JSON")


def dumps(obj: object) -> bytes:
    """Compact JSON (ASCII, no NaN or infinities) by CPython's C encoder, without importing ``json``."""
    encode = _json.make_encoder(
        {}, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return "".join(encode(obj, 0)).encode("ascii")


def write_json(out_dir: str, name: str, obj: object) -> None:
    """Write ``obj`` as compact JSON to ``out_dir/name``, a file that must not exist yet nor be a link.

    Raises:
        OSError: the file exists or cannot be written.
        TypeError, ValueError: ``obj`` holds a value JSON cannot represent.
    """
    raw = dumps(obj)
    fd = os.open(os.path.join(out_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)


# The exit statuses the host reads together with error.json: the file's format (or text encoding, or
# code that cannot be exported), a budget, anything else.
EXIT_FORMAT = 2
EXIT_LIMIT = 3
EXIT_CRASH = 4
_EXIT_BY_KIND = {"format": EXIT_FORMAT, "encoding": EXIT_FORMAT, "unsafe": EXIT_FORMAT, "limit": EXIT_LIMIT}


def write_error(out_dir: str, kind: str, message: str, **extra: str) -> int:
    """Write ``out_dir/error.json`` (sandbox/PROTOCOL.md: ``kind``, ``message`` and any ``extra`` fields)
    and return the worker's exit status for ``kind``. Never raises: a worker that cannot say why it
    failed still exits with the status."""
    path = os.path.join(out_dir, "error.json")
    try:
        raw = dumps({"version": 1, "kind": kind, "message": message[:4000], **extra})
        # Through a new name and a rename: in execute mode the checkpoint's code ran in this process and
        # may have left an error.json of its own, which the worker's account replaces.
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.replace(path + ".tmp", path)
    except (OSError, TypeError, ValueError):
        pass
    return _EXIT_BY_KIND.get(kind, EXIT_CRASH)


class FormatError(Exception):
    """The artifact is not in a format the worker can read (reported as kind ``format``)."""


class EncodingError(FormatError):
    """A Python 2 string in the pickle does not decode with the encoding asked for (kind ``encoding``)."""


class LimitError(Exception):
    """The artifact exceeds a budget (reported as kind ``limit``)."""


class Budgets:
    """Limits that end decompression, allocation and nesting bombs.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect``, about a fifth of the worker's
    start-up inside the jail.
    """

    __slots__ = ("max_depth", "max_int_bytes", "max_memo", "max_nodes", "max_ops", "max_output_bytes")

    def __init__(
        self,
        max_nodes: int = MAX_NODES,
        max_depth: int = MAX_DEPTH,
        max_memo: int = 10_000_000,
        max_ops: int = 200_000_000,
        max_int_bytes: int = 1024,  # JSON and int() refuse numbers over 4300 digits
        max_output_bytes: int = 64 << 30,
    ) -> None:
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.max_memo = max_memo
        self.max_ops = max_ops
        self.max_int_bytes = max_int_bytes
        self.max_output_bytes = max_output_bytes


def write_u8_safetensors(
    path: str, storages: Iterable[tuple[str, int, Callable[[], Iterable[bytes]]]]
) -> None:
    """Write ``storages`` (key, byte count, chunks) as one safetensors file of ``U8`` tensors, in order.

    The data section starts 8-aligned; callers order storages by decreasing element alignment so each
    starts at a multiple of its element size and the host can use it in place. A storage whose chunks do
    not add up to its byte count is a bug in the walk, never written as announced.
    """
    items = list(storages)
    header: dict[str, object] = {}
    pos = 0
    for key, nbytes, _ in items:
        header[key] = {"dtype": "U8", "shape": [nbytes], "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = dumps(header)
    raw += b" " * (-len(raw) % 8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for key, nbytes, chunks in items:
            written = 0
            for chunk in chunks():
                written += len(chunk)
                if written > nbytes:
                    raise FormatError(f"{key} has more bytes than its header announced")
                fh.write(chunk)
            if written != nbytes:
                raise FormatError(f"{key} has fewer bytes than its header announced")
