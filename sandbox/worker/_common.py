"""Errors and budgets shared by the worker's parsers (standard library only).

The host imports the budget constants too, so that it validates a manifest against exactly the limits the
worker enforced while writing it.
"""

from __future__ import annotations

import re

__all__ = [
    "ATTRIBUTE",
    "DTYPE_SIZES",
    "LOCATION",
    "MAX_DEPTH",
    "MAX_NAME",
    "MAX_NODES",
    "NP_DTYPE",
    "Budgets",
    "FormatError",
    "LimitError",
]

# Nesting depth of the object tree a checkpoint may describe; the host rebuilds it recursively, so this
# stays well under Python's default recursion limit.
MAX_DEPTH = 200
# Objects (containers, scalars, tensors, stubs) in one manifest.
MAX_NODES = 5_000_000

# The element sizes of the torch dtypes the manifest may name.
DTYPE_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
    "complex32": 4,
}

# Storage locations and device strings (``cpu``, ``cuda:0``, ``mps``, ...).
LOCATION = re.compile(r"^[A-Za-z0-9_.\-]{1,32}(:[0-9]{1,6})?$")
# Attribute names an OrderedDict or argparse.Namespace may carry (no dunders; the host also refuses names
# of the class's own attributes, such as ``items``).
ATTRIBUTE = re.compile(r"^(?!__)[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Longest module or global name a stub may record.
MAX_NAME = 1024
# The numpy dtypes (``dtype.str``) that the host rebuilds as numeric arrays.
NP_DTYPE = re.compile(r"^(\|b1|\|[iu]1|[<>][iu](2|4|8)|[<>]f(2|4|8)|[<>]c(8|16))$")


class FormatError(Exception):
    """The artifact is not in a format the worker can read (reported as kind ``format``)."""


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
