"""What the host and the jailed worker agree on about tensor bytes (no imports at all).

The worker's parsers, its execute mode and the host (manifest validation, format sniffing, ``safeload
inspect``, conversion) all read these tables, so a dtype or a size limit cannot mean one thing in the jail
and another outside it. The host imports this module as ``safeload._sandbox.worker.protocol``.
"""

from __future__ import annotations

__all__ = ["DTYPE_SIZES", "MAX_SAFETENSORS_HEADER", "SAFETENSORS_DTYPES"]

# The element sizes of the torch dtypes a manifest may name (sandbox/PROTOCOL.md's storage dtypes).
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

# safetensors' dtype codes and the torch dtype each one holds (every value is a key of DTYPE_SIZES).
SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
}

# The longest safetensors JSON header read: the 8-byte length prefix is the file's word, and a header
# this long already describes millions of tensors.
MAX_SAFETENSORS_HEADER = 100 << 20
