"""Builds Python objects, tensors and arrays from a validated manifest.

Storages are views on bytes the host already holds: the verified input, mapped copy-on-write (so loaded
tensors are writable and writing never touches the file), or the worker's ``tensors.safetensors``. Tensors
are views on those storages with the recorded offset, shape and stride, so aliasing survives the trip.
``map_location`` is applied per storage, exactly where ``torch.load`` applies it.
"""

from __future__ import annotations

import argparse
import base64
import collections
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch

from safeload._loading.manifest import Manifest, StorageSpec
from safeload._stub import Stub
from safeload.errors import DeviceUnavailableError, SafeloadError, SandboxError

__all__ = ["MapLocation", "Restore", "build", "make_restore"]

MapLocation = Union[
    None, str, torch.device, dict[str, str], Callable[[torch.UntypedStorage, str], Any]
]
Restore = Callable[[torch.UntypedStorage, str], torch.UntypedStorage]

_TORCH_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in (
        "float64 float32 float16 bfloat16 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz int64 "
        "int32 int16 int8 uint8 uint16 uint32 uint64 bool complex64 complex128 complex32"
    ).split()
}


def _default_restore(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
    if location.startswith("cuda") and torch.cuda.is_available():
        # Copy through pinned memory with one DMA per storage instead of page-faulting the mapping.
        device = torch.device(location)
        staged = torch.empty(0, dtype=torch.uint8).set_(storage).pin_memory()
        return staged.to(device, non_blocking=True).untyped_storage()
    if location == "cpu" and _cpu_restores_first():
        # What default_restore_location returns for "cpu" (the storage itself), minus its registry walk,
        # which for a checkpoint of many small tensors cost more than building them.
        return storage
    # Same behaviour as torch.load; its error for a device this machine lacks (CUDA storages on a
    # CPU-only machine) becomes a typed one that keeps torch's words and says how to load anyway.
    try:
        result = torch.serialization.default_restore_location(storage, location)  # type: ignore[no-untyped-call]
    except RuntimeError as exc:
        if isinstance(exc, SafeloadError):
            raise
        raise DeviceUnavailableError(
            f"tensors are to be placed on {location} (where the checkpoint saved them, unless map_location "
            f"says otherwise), which this machine cannot do; pass map_location=\"cpu\" (or a device this "
            f"machine has), e.g. safeload.load(f, map_location=\"cpu\"). torch says: {exc}"
        ) from None
    return _untyped(result)


def _cpu_restores_first() -> bool:
    """Whether torch's own CPU deserializer is the first one default_restore_location tries (a package
    registered with a lower priority number could claim "cpu" storages; then it is called as usual)."""
    registry = getattr(torch.serialization, "_package_registry", None)
    if not registry:
        return False
    first = registry[0][2]
    return first is getattr(torch.serialization, "_cpu_deserialize", None)


def _untyped(result: Any) -> torch.UntypedStorage:
    if isinstance(result, torch.UntypedStorage):
        return result
    if isinstance(result, torch.storage.TypedStorage):
        return result._untyped_storage
    raise TypeError(f"map_location returned {type(result).__name__}, expected a storage")


def make_restore(map_location: MapLocation) -> Restore:
    """The per-storage placement function ``torch.load`` derives from ``map_location``."""
    if map_location is None:
        return _default_restore
    if isinstance(map_location, dict):
        remap = dict(map_location)
        return lambda s, loc: _default_restore(s, remap.get(loc, loc))
    if isinstance(map_location, (str, bytes)):
        target = map_location.decode() if isinstance(map_location, bytes) else map_location
        return lambda s, loc: _default_restore(s, target)
    if isinstance(map_location, torch.device):
        dev = str(map_location)
        return lambda s, loc: _default_restore(s, dev)
    if callable(map_location):
        fn = map_location

        def call(s: torch.UntypedStorage, loc: str) -> torch.UntypedStorage:
            result = fn(s, loc)
            return _default_restore(s, loc) if result is None else _untyped(result)

        return call
    raise TypeError(
        f"map_location must be a string, torch.device, dict or callable, not {type(map_location).__name__}"
    )


class _Builder:
    def __init__(self, manifest: Manifest, raw: Sequence[torch.Tensor], restore: Restore) -> None:
        self.specs = manifest.storages
        self.raw = raw  # uint8 CPU tensors, one per storage
        self.restore = restore
        self.placed: dict[int, torch.UntypedStorage] = {}
        self.objs: dict[int, Any] = {}

    def storage(self, sid: int) -> torch.UntypedStorage:
        s = self.placed.get(sid)
        if s is None:
            spec: StorageSpec = self.specs[sid]
            s = self.restore(self.raw[sid].untyped_storage(), spec.location)
            if s.nbytes() != spec.nbytes:
                raise SandboxError(f"map_location returned a storage of {s.nbytes()} bytes for {spec.nbytes}")
            self.placed[sid] = s
        return s

    def keep(self, node: dict[str, Any], value: Any) -> Any:
        if "id" in node:
            self.objs[node["id"]] = value
        return value

    def build(self, node: dict[str, Any]) -> Any:
        t = node["t"]
        if t == "ref":
            return self.objs[node["id"]]
        if t == "none":
            return None
        if t in ("bool", "int"):
            return node["v"]
        if t == "float":
            return float.fromhex(node["v"])
        if t == "complex":
            return complex(float.fromhex(node["re"]), float.fromhex(node["im"]))
        if t == "str":
            return self.keep(node, node["v"])
        if t == "bytes":
            return self.keep(node, base64.b64decode(node["b64"]))
        if t == "bytearray":
            return self.keep(node, bytearray(base64.b64decode(node["b64"])))
        if t == "list":
            out: list[Any] = self.keep(node, [])
            out.extend(self.build(x) for x in node["items"])
            return out
        if t == "set":
            s: set[Any] = self.keep(node, set())
            for x in node["items"]:
                s.add(self.build(x))
            return s
        if t == "tuple":
            return self.keep(node, tuple(self.build(x) for x in node["items"]))
        if t == "frozenset":
            return self.keep(node, frozenset(self.build(x) for x in node["items"]))
        if t in ("dict", "odict"):
            d: dict[Any, Any] = self.keep(node, {} if t == "dict" else collections.OrderedDict())
            for k, v in node["items"]:
                key = self.build(k)
                d[key] = self.build(v)
            for name, v in node.get("attrs", ()):
                setattr(d, name, self.build(v))
            return d
        if t == "namespace":
            ns = self.keep(node, argparse.Namespace())
            for name, v in node["items"]:
                setattr(ns, name, self.build(v))
            return ns
        if t == "slice":
            return self.keep(node, slice(self.build(node["start"]), self.build(node["stop"]),
                                         self.build(node["step"])))
        if t == "tensor":
            return self.keep(node, self.tensor(node))
        if t == "parameter":
            data = self.build(node["data"])
            return self.keep(node, torch.nn.Parameter(data, requires_grad=node["requires_grad"]))
        if t == "storage":
            storage = self.storage(node["storage"])
            typed = torch.storage.TypedStorage(  # type: ignore[no-untyped-call]
                wrap_storage=storage, dtype=_TORCH_DTYPES[node["dtype"]], _internal=True
            )
            return self.keep(node, typed)
        if t == "ndarray":
            raw = self.raw[node["storage"]].numpy()
            arr = np.ndarray(tuple(node["shape"]), dtype=np.dtype(node["dtype"]), buffer=raw,
                             order=node["order"])
            return self.keep(node, arr)
        if t == "objarray":
            shape = tuple(node["shape"])
            arr = self.keep(node, np.empty(shape, dtype=object, order=node["order"]))
            # numpy pickles object arrays' elements in logical C order, whatever the memory layout.
            for i, x in enumerate(node["items"]):
                arr[np.unravel_index(i, shape) if shape else ()] = self.build(x)
            return arr
        if t == "npscalar":
            return np.frombuffer(base64.b64decode(node["b64"]), dtype=np.dtype(node["dtype"]))[0]
        if t == "torch_dtype":
            return _TORCH_DTYPES[node["v"]]
        if t == "torch_size":
            return self.keep(node, torch.Size(node["items"]))
        if t == "torch_device":
            try:
                return torch.device(node["v"])
            except RuntimeError as exc:  # an unknown device type, as torch.load would also refuse
                raise SandboxError(f"the checkpoint names a device torch does not know: {exc}") from None
        if t == "np_dtype":
            return np.dtype(node["v"])
        if t == "stub":
            return self.stub(node)
        raise SandboxError(f"unknown node type {t!r}")  # unreachable after validation

    def tensor(self, node: dict[str, Any]) -> torch.Tensor:
        storage = self.storage(node["storage"])
        t = torch.empty(0, dtype=_TORCH_DTYPES[node["dtype"]], device=storage.device)
        t.set_(storage, node["offset"], node["shape"], node["stride"])
        if node["requires_grad"]:
            t.requires_grad_(True)
        return t

    def stub(self, node: dict[str, Any]) -> Stub:
        stub = Stub(node["module"], node["name"], node["called"])
        self.keep(node, stub)
        # The stub is registered before its contents so that cycles through it resolve to it.
        fields = {
            "args": None if node["args"] is None else self.build(node["args"]),
            "kwargs": None if node["kwargs"] is None else self.build(node["kwargs"]),
            "state": None if node["state"] is None else self.build(node["state"]),
        }
        for name, value in fields.items():
            object.__setattr__(stub, name, value)
        stub.listitems.extend(self.build(x) for x in node["listitems"])
        for k, v in node["dictitems"]:
            key = self.build(k)
            stub.dictitems[key] = self.build(v)
        return stub


def build(manifest: Manifest, raw: Sequence[torch.Tensor], restore: Restore) -> Any:
    """Build the object a validated manifest describes over ``raw`` (one uint8 CPU tensor per storage).

    Raises:
        SandboxError: the manifest's values cannot be built (e.g. an unhashable dictionary key).
        DeviceUnavailableError: a storage's device (or the one ``map_location`` asks for) is not on this
            machine; a ``RuntimeError`` too, as ``torch.load`` raises there.
    """
    builder = _Builder(manifest, raw, restore)
    try:
        return builder.build(manifest.root)
    except (TypeError, ValueError, RecursionError) as exc:
        # RuntimeError is left alone: a missing device is a DeviceUnavailableError, which is one.
        raise SandboxError(f"the worker's manifest describes values that cannot be built: {exc}") from None
