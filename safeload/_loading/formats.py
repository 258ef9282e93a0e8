"""Host-side format sniffing: safetensors is read by the host; everything else goes to the jail.

Only the cheap question "is this a safetensors file?" is answered here, from the first bytes. Telling the
pickle-family formats apart (torch zip, legacy, numpy, raw pickle, ...) needs parsing, which happens in the
worker, inside the jail.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Literal

__all__ = ["sniff"]

_MAX_HEADER = 100 << 20


def sniff(fd: int, size: int) -> Literal["safetensors", "sandbox"]:
    """``"safetensors"`` if the file at ``fd`` is shaped like one (header length, then a JSON object)."""
    if size < 10:
        return "sandbox"
    head = os.pread(fd, 9, 0)
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= min(size - 8, _MAX_HEADER) or head[8:9] != b"{":
        return "sandbox"
    try:
        header = json.loads(os.pread(fd, n, 8))
    except (ValueError, RecursionError):
        return "sandbox"
    return "safetensors" if isinstance(header, dict) else "sandbox"
