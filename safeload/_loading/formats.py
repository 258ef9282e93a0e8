"""Host-side format sniffing: safetensors is read by the host; everything else goes to the jail.

Only the cheap question "is this a safetensors file?" is answered here, from the first bytes. Telling the
pickle-family formats apart (torch zip, legacy, numpy, raw pickle, ...) needs parsing, which happens in the
worker, inside the jail.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Literal

from safeload._sandbox.worker.protocol import MAX_SAFETENSORS_HEADER

__all__ = ["safetensors_header", "sniff"]


def safetensors_header(fd: int, size: int) -> dict[str, Any] | None:
    """The JSON header of the safetensors file at ``fd`` (``size`` bytes long), or None when the file is
    not shaped like one (no length prefix that fits the file and the cap, or no JSON object after it).

    Only the header's shape is checked here; whether its entries describe the data is safetensors' own
    check when the file is opened.
    """
    if size < 10:
        return None
    head = os.pread(fd, 9, 0)
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER) or head[8:9] != b"{":
        return None
    try:
        header = json.loads(os.pread(fd, n, 8))
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def sniff(fd: int, size: int) -> Literal["safetensors", "sandbox"]:
    """``"safetensors"`` if the file at ``fd`` is shaped like one (header length, then a JSON object)."""
    return "sandbox" if safetensors_header(fd, size) is None else "safetensors"
