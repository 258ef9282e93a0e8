"""Errors, budgets and name checks shared by the worker's parsers (standard library only).

The host imports the budget constants and the checks too, so that it validates a manifest against exactly
the rules the worker enforced while writing it. Nothing here imports ``re`` or ``json``: together they
cost the jail ~10 ms of its 50 ms start-up.
"""

from __future__ import annotations

import _json

__all__ = [
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
]

def open_input(spec: str) -> int:
    """A new descriptor for the artifact, at offset 0: ``fd:N`` names one the launcher handed in (the
    jails without a fresh ``/proc`` have no path to it), anything else is a path."""
    import os

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
