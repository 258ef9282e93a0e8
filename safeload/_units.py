"""Durations ("120s", "5m") and sizes ("8GiB", "512MB") as written in ``trust.toml``."""

from __future__ import annotations

import re

__all__ = ["parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|K|M|G|T)?\s*$")
_SIZE_SCALE = {
    None: 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
}  # fmt: skip


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like ``"500ms"``, ``"120s"``, ``"5m"``, ``"1h"``.

    Raises:
        ValueError: not a positive duration (callers turn this into a PolicyError with the field's path).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '120s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_SCALE[m.group(2)]
    else:
        raise ValueError(f"expected a duration like '120s', '5m' or '1h', got {value!r}")
    if not seconds > 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like ``"8GiB"``, ``"512MiB"``, ``"1GB"`` (K/M/G/T are binary).

    Raises:
        ValueError: not a positive size (callers turn this into a PolicyError with the field's path).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '8GiB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_SCALE[m.group(2)])
    else:
        raise ValueError(f"expected a size like '8GiB', '512MiB' or a number of bytes, got {value!r}")
    if size <= 0:
        raise ValueError(f"must be a positive size, got {value!r}")
    return size
