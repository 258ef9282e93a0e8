"""Reference results from the real loaders, computed in a throwaway subprocess.

The test process must never unpickle (``tests/conftest.py``), so :func:`reference` runs
``torch.load(weights_only=False)`` (or ``numpy.load(allow_pickle=True)``) in a fresh interpreter, which
describes the result with :func:`describe` and writes every tensor's bytes to a safetensors file. The
test describes what ``safeload.load`` returned with the same function and compares the two: structure,
dtypes, shapes, strides, storage offsets, which tensors share a storage, and every byte.

A pickled ``nn.Module`` is described by its class and ``state_dict()``; on the safeload side the same
module is a ``safeload.Stub``, described by its global and ``safeload.state_dict(stub)``. Any other object
is described by its class name only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Described:
    """A JSON-able description plus the bytes of every tensor and array in it, keyed as it refers to them."""

    structure: Any
    blobs: dict[str, torch.Tensor]


class _Describer:
    def __init__(self) -> None:
        self.blobs: dict[str, torch.Tensor] = {}
        self.storages: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        self.alive: list[Any] = []  # keeps described temporaries alive so their ids stay unique

    def blob(self, raw: torch.Tensor) -> str:
        key = f"b{len(self.blobs)}"
        self.blobs[key] = raw.clone()
        return key

    def tensor(self, t: torch.Tensor) -> dict[str, Any]:
        t = t.detach() if isinstance(t, torch.nn.Parameter) else t
        ptr = t.untyped_storage().data_ptr()
        sid = self.storages.setdefault(ptr, len(self.storages)) if t.untyped_storage().nbytes() else -1
        flat = t.detach().cpu().reshape(-1).contiguous()
        return {
            "dtype": str(t.dtype), "shape": list(t.shape), "stride": list(t.stride()),
            "offset": t.storage_offset(), "device": str(t.device), "storage": sid,
            "storage_nbytes": t.untyped_storage().nbytes(), "bytes": self.blob(flat.view(torch.uint8)),
        }

    def __call__(self, obj: Any) -> Any:
        from safeload import Stub, state_dict

        if isinstance(obj, (list, dict, tuple, torch.Tensor, Stub, torch.nn.Module, np.ndarray)):
            if id(obj) in self.seen:
                return {"same_as": self.seen[id(obj)]}
            self.seen[id(obj)] = len(self.seen)
            self.alive.append(obj)
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            return {"float": obj.hex()}
        if isinstance(obj, complex):
            return {"complex": [obj.real.hex(), obj.imag.hex()]}
        if isinstance(obj, (bytes, bytearray)):
            return {type(obj).__name__: obj.hex()}
        if isinstance(obj, torch.nn.Parameter):
            return {"parameter": self.tensor(obj), "requires_grad": obj.requires_grad}
        if isinstance(obj, torch.Tensor):
            return {"tensor": self.tensor(obj), "requires_grad": obj.requires_grad}
        if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
            return {type(obj).__name__: str(obj)}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                return {"objarray": list(obj.shape), "items": [self(x) for x in obj.reshape(-1)]}
            raw = torch.frombuffer(bytearray(obj.tobytes(order="A")), dtype=torch.uint8) if obj.nbytes else (
                torch.empty(0, dtype=torch.uint8))
            return {"ndarray": obj.dtype.str, "shape": list(obj.shape), "fortran": bool(
                obj.flags.f_contiguous and not obj.flags.c_contiguous), "bytes": self.blob(raw)}
        if isinstance(obj, np.generic):
            return {"npscalar": obj.dtype.str, "hex": obj.tobytes().hex()}
        if isinstance(obj, np.dtype):
            return {"np_dtype": obj.str}
        if isinstance(obj, collections.OrderedDict):
            meta = getattr(obj, "_metadata", None)
            return {"odict": [[self(k), self(v)] for k, v in obj.items()],
                    "_metadata": None if meta is None else self(meta)}
        if isinstance(obj, dict):
            return {"dict": [[self(k), self(v)] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return {type(obj).__name__: [self(x) for x in obj]}
        if isinstance(obj, (set, frozenset)):
            return {type(obj).__name__: sorted(json.dumps(self(x), sort_keys=True) for x in obj)}
        if isinstance(obj, slice):
            return {"slice": [self(obj.start), self(obj.stop), self(obj.step)]}
        if isinstance(obj, argparse.Namespace):
            return {"namespace": {k: self(v) for k, v in sorted(vars(obj).items())}}
        if isinstance(obj, torch.nn.Module):
            cls = type(obj)
            return {"module": f"{cls.__module__}.{cls.__qualname__}", "state_dict": self(obj.state_dict())}
        if isinstance(obj, Stub):
            sd = state_dict(obj) if isinstance(obj.state, dict) and "_parameters" in obj.state else None
            if sd is not None:
                sd_desc = self(collections.OrderedDict(sd))
                sd_desc["_metadata"] = "ignored"
                return {"module": obj.qualname, "state_dict": sd_desc}
            return {"object": obj.qualname}
        cls = type(obj)
        return {"object": f"{cls.__module__}.{cls.__qualname__}"}


def describe(obj: Any) -> Described:
    d = _Describer()
    structure = d(obj)
    return Described(structure, d.blobs)


def _strip_module_metadata(structure: Any) -> Any:
    """nn.Module.state_dict() attaches version metadata that a stub cannot know; ignore it in modules."""
    if isinstance(structure, dict):
        if "module" in structure and "state_dict" in structure:
            sd = dict(structure["state_dict"])
            sd["_metadata"] = "ignored"
            return {"module": structure["module"], "state_dict": _strip_module_metadata(sd)}
        return {k: _strip_module_metadata(v) for k, v in structure.items()}
    if isinstance(structure, list):
        return [_strip_module_metadata(x) for x in structure]
    return structure


_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from safetensors.torch import save_file
from tests.helpers.reference import describe
for i, (path, loader, map_location) in enumerate(json.loads(sys.argv[3])):
    if loader == "torch":
        obj = torch.load(path, map_location=map_location, weights_only=False)
    elif loader == "joblib":
        import joblib
        obj = joblib.load(path)
    elif loader == "numpy":
        obj = np.load(path, allow_pickle=True)
        if hasattr(obj, "files"):
            obj = {k: obj[k] for k in obj.files}
    else:
        import pickle
        encoding = loader.partition(":")[2] or "ASCII"
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding=encoding)
    d = describe(obj)
    save_file(d.blobs, f"{sys.argv[2]}/{i}.safetensors")
    with open(f"{sys.argv[2]}/{i}.json", "w") as fh:
        json.dump(d.structure, fh)
"""


def references(
    jobs: list[tuple[str | os.PathLike[str], str, str | None]],
) -> list[Described]:
    """For each ``(path, loader, map_location)``, what the real loader returns, all in one subprocess.

    ``loader`` is ``torch`` (``torch.load(weights_only=False)``), ``numpy``
    (``numpy.load(allow_pickle=True)``, an ``.npz`` as a dict), ``joblib``, or ``pickle`` (``pickle:latin1``:
    with that ``encoding``).
    """
    from safetensors.torch import load_file

    spec = [[os.fspath(p), loader, ml] for p, loader, ml in jobs]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(_REPO), out, json.dumps(spec)],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"reference load failed:\n{proc.stderr[-4000:]}")
        results = []
        for i in range(len(spec)):
            structure = json.loads(Path(out, f"{i}.json").read_text())
            results.append(Described(structure, load_file(str(Path(out, f"{i}.safetensors")))))
    return results


def reference(
    path: str | os.PathLike[str], *, loader: str = "torch", map_location: str | None = None
) -> Described:
    """What the real loader returns for one file (see :func:`references`)."""
    return references([(path, loader, map_location)])[0]


def assert_same(ours: Any, ref: Described) -> None:
    """``ours`` (what safeload returned) matches the reference bit for bit, aliasing included."""
    mine = describe(ours)
    a = _strip_module_metadata(json.loads(json.dumps(mine.structure)))
    b = _strip_module_metadata(ref.structure)
    assert a == b, _first_difference(a, b, "root")
    assert set(mine.blobs) == set(ref.blobs)
    for key, blob in mine.blobs.items():
        assert torch.equal(blob, ref.blobs[key]), f"bytes of {key} differ"


def _first_difference(a: Any, b: Any, path: str) -> str:
    if type(a) is not type(b):
        return f"{path}: {str(a)[:300]} != {str(b)[:300]}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {str(a)[:300]} != {str(b)[:300]}"
