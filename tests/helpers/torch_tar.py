"""Checkpoints in torch's pre-0.4 tar layout, written by hand: torch still reads it, never writes it."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["torch_tar_bytes", "write_torch_tar"]


class _Saved:
    def __init__(self, key: int) -> None:
        self.key = key


def torch_tar_bytes() -> bytes:
    """Two storages (one with a view storage), five tensors over them, and a pickle that uses them."""

    def p(obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=2)

    a = torch.arange(12, dtype=torch.float32)
    b = torch.arange(4, dtype=torch.int64) - 2
    storages = io.BytesIO()
    storages.write(p(2))
    for key, stype, t in ((0, torch.FloatStorage, a), (1, torch.LongStorage, b)):
        storages.write(p((key, "cpu", stype)))
        storages.write(struct.pack("<q", t.numel()) + t.numpy().tobytes())
    storages.write(p([(5, 0, 2, 6)]))  # storage 5 is elements 2..8 of storage 0
    geometry = [(10, 0, (12,), (1,), 0), (11, 0, (2, 3), (1, 2), 4), (12, 1, (4,), (1,), 0),
                (13, 5, (2, 3), (3, 1), 0), (14, 0, (), (), 7)]
    tensors = io.BytesIO()
    tensors.write(p(len(geometry)))
    for key, sid, size, stride, offset in geometry:
        tensors.write(p((key, sid, "torch.FloatTensor")))
        tensors.write(struct.pack("<i", len(size)) + b"\0" * 4)
        tensors.write(struct.pack(f"<{len(size)}q", *size) + struct.pack(f"<{len(size)}q", *stride))
        tensors.write(struct.pack("<q", offset))

    class Saver(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return str(obj.key) if isinstance(obj, _Saved) else None

    main = io.BytesIO()
    Saver(main, protocol=2).dump({"a": _Saved(10), "t": _Saved(11), "i": _Saved(12), "view": _Saved(13),
                                  "scalar": _Saved(14), "again": _Saved(10), "n": [1, 2]})
    sys_info = p({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4}})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = {"sys_info": sys_info, "pickle": main.getvalue(), "tensors": tensors.getvalue(),
                   "storages": storages.getvalue()}
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_torch_tar(path: Path) -> None:
    path.write_bytes(torch_tar_bytes())
