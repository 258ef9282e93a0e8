"""Turns what the inert unpickler read into the manifest and ``tensors.safetensors`` (see PROTOCOL.md)."""

from __future__ import annotations

import binascii
import os

from ._allowlist import ALLOWLIST
from ._common import Budgets, FormatError, LimitError, write_u8_safetensors
from ._values import (
    Global,
    Namespace,
    NDArray,
    NpDtype,
    NpScalar,
    ODict,
    Parameter,
    StorageRef,
    Stub,
    Tensor,
    TorchDevice,
    TorchDtype,
    TorchSize,
)
from .protocol import DTYPE_SIZES

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any


def _b64(data: bytes | bytearray | memoryview) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")

__all__ = ["StorageTable", "build_manifest", "write_outputs"]

_SHARED_STR_LEN = 32
_MAX_INT = 1 << 62


class StorageTable:
    """Every storage the manifest describes, with where its bytes are."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self.specs: list[dict[str, Any]] = []
        self.outputs: list[tuple[str, int, Callable[[], Iterable[bytes]]]] = []
        self.output_bytes = 0

    def _add(self, dtype: str, nbytes: int, location: str) -> StorageRef:
        if dtype not in DTYPE_SIZES:
            raise FormatError(f"storage dtype {dtype!r} is not supported")
        if nbytes < 0 or nbytes % DTYPE_SIZES[dtype]:
            raise FormatError("storage size is not a whole number of elements")
        ref = StorageRef(len(self.specs), dtype)
        self.specs.append({"id": ref.index, "dtype": dtype, "nbytes": nbytes, "location": location,
                           "source": None})
        return ref

    def add_input(self, dtype: str, nbytes: int, location: str, offset: int | None) -> StorageRef:
        """A storage whose bytes sit at ``offset`` of the input (``None``: known later, see set_offset)."""
        ref = self._add(dtype, nbytes, location)
        if offset is not None:
            self.set_offset(ref, offset)
        return ref

    def set_offset(self, ref: StorageRef, offset: int) -> None:
        spec = self.specs[ref.index]
        spec["source"] = {"kind": "input", "offset": offset, "length": spec["nbytes"]}

    def add_output(
        self, dtype: str, nbytes: int, location: str, chunks: Callable[[], Iterable[bytes]]
    ) -> StorageRef:
        """A storage whose bytes the worker copies into ``tensors.safetensors``."""
        ref = self._add(dtype, nbytes, location)
        self.set_output(ref, chunks)
        return ref

    def set_output(self, ref: StorageRef, chunks: Callable[[], Iterable[bytes]]) -> None:
        """Give a storage added with ``add_input(..., None)`` bytes the worker copies instead."""
        nbytes = self.specs[ref.index]["nbytes"]
        self.output_bytes += nbytes
        if self.output_bytes > self.budgets.max_output_bytes:
            raise LimitError(f"decoded tensors exceed the {self.budgets.max_output_bytes}-byte output budget")
        key = f"storage_{ref.index}"
        self.specs[ref.index]["source"] = {"kind": "output", "key": key}
        self.outputs.append((key, nbytes, chunks))


def write_outputs(out_dir: str, table: StorageTable) -> None:
    """Write ``tensors.safetensors`` (uint8 tensors, one per output storage) when there is any."""
    if table.outputs:
        write_u8_safetensors(os.path.join(out_dir, "tensors.safetensors"), table.outputs)


class _Emitter:
    def __init__(self, table: StorageTable, budgets: Budgets) -> None:
        self.table = table
        self.budgets = budgets
        self.ids: dict[int, int] = {}
        self.closed: set[int] = set()
        self.keep: list[Any] = []
        self.nodes = 0

    def open(self, obj: Any) -> int:
        n = len(self.ids)
        self.ids[id(obj)] = n
        self.keep.append(obj)
        return n

    def ref(self, obj: Any, immutable: bool) -> dict[str, Any] | None:
        n = self.ids.get(id(obj))
        if n is None:
            return None
        if immutable and n not in self.closed:
            raise FormatError("pickle builds an immutable value that contains itself")
        return {"t": "ref", "id": n}

    def node(self, obj: Any, depth: int) -> dict[str, Any]:
        self.nodes += 1
        if self.nodes > self.budgets.max_nodes:
            raise LimitError(f"checkpoint describes more than {self.budgets.max_nodes} objects")
        if depth > self.budgets.max_depth:
            raise LimitError(f"checkpoint nests deeper than {self.budgets.max_depth} levels")
        d = depth + 1
        t = type(obj)
        if obj is None:
            return {"t": "none"}
        if t is bool:
            return {"t": "bool", "v": obj}
        if t is int:
            return {"t": "int", "v": obj}
        if t is float:
            return {"t": "float", "v": obj.hex()}
        if t is complex:
            return {"t": "complex", "re": obj.real.hex(), "im": obj.imag.hex()}
        if t is str or t is bytes:
            shared = len(obj) > _SHARED_STR_LEN
            if shared:
                r = self.ref(obj, False)
                if r is not None:
                    return r
            out: dict[str, Any] = (
                {"t": "str", "v": obj} if t is str else {"t": "bytes", "b64": _b64(obj)}
            )
            if shared:
                out["id"] = self.open(obj)
                self.closed.add(out["id"])
            return out
        r = self.ref(obj, t in (tuple, frozenset, slice) or isinstance(obj, (Tensor, Parameter, TorchSize)))
        if r is not None:
            return r
        if t is bytearray:
            return {"t": "bytearray", "id": self.open(obj), "b64": _b64(obj)}
        if t in (list, set):
            n = self.open(obj)
            return {"t": t.__name__, "id": n, "items": [self.node(x, d) for x in obj]}
        if t is dict or t is ODict:
            n = self.open(obj)
            out = {"t": "dict" if t is dict else "odict", "id": n,
                   "items": [[self.node(k, d), self.node(v, d)] for k, v in obj.items()]}
            if t is ODict and obj.attrs:
                out["attrs"] = [[k, self.node(v, d)] for k, v in obj.attrs.items()]
            return out
        if t in (tuple, frozenset):
            out = {"t": t.__name__, "items": [self.node(x, d) for x in obj]}
            return self.close(obj, out)
        if t is slice:
            out = {"t": "slice", "start": self.node(obj.start, d), "stop": self.node(obj.stop, d),
                   "step": self.node(obj.step, d)}
            return self.close(obj, out)
        if t is Tensor:
            return self.close(obj, self.tensor(obj))
        if t is Parameter:
            if obj.requires_grad and not obj.data.dtype.startswith(("float", "bfloat", "complex")):
                raise FormatError("an integer parameter cannot require gradients")
            out = {"t": "parameter", "data": self.node(obj.data, d), "requires_grad": obj.requires_grad}
            return self.close(obj, out)
        if t is TorchSize:
            return self.close(obj, {"t": "torch_size", "items": list(obj.items)})
        if t is TorchDtype:
            return {"t": "torch_dtype", "v": obj.name}
        if t is TorchDevice:
            return {"t": "torch_device", "v": obj.v}
        if t is StorageRef:
            return self.close(obj, {"t": "storage", "storage": obj.index, "dtype": obj.dtype})
        if t is Namespace:
            n = self.open(obj)
            return {"t": "namespace", "id": n, "items": [[k, self.node(v, d)] for k, v in obj.items.items()]}
        if t is NpDtype:
            if obj.typestr is None:
                return self.stub_node(Stub("numpy", "dtype", (obj.kind,), True), d)
            return {"t": "np_dtype", "v": obj.typestr}
        if t is NpScalar:
            return {"t": "npscalar", "dtype": obj.dtype, "b64": _b64(obj.data)}
        if t is NDArray:
            return self.ndarray(obj, d)
        if t is Global:
            return self.stub_node(Stub(obj.module, obj.name, None, False), d, key=obj)
        if t is Stub:
            return self.stub_node(obj, d)
        raise FormatError(f"cannot describe a {t.__name__} value")

    def close(self, obj: Any, out: dict[str, Any]) -> dict[str, Any]:
        n = self.open(obj)
        self.closed.add(n)
        out["id"] = n
        return out

    def tensor(self, t: Tensor) -> dict[str, Any]:
        if t.dtype not in DTYPE_SIZES:
            raise FormatError(f"tensor dtype {t.dtype!r} is not supported")
        # The same checks the host makes (safeload/_loading/manifest.py), so that a well-formed file never
        # produces a manifest the host rejects as an attack.
        size = DTYPE_SIZES[t.dtype]
        nbytes = self.table.specs[t.storage.index]["nbytes"]
        numel, span = 1, 1
        for s, st in zip(t.shape, t.stride, strict=True):
            numel *= s
            span += (s - 1) * st
        if 0 in t.shape:
            span = 0
        if (len(t.shape) > 64 or any(x >= _MAX_INT for x in (t.offset, *t.shape, *t.stride))
                or numel * size >= _MAX_INT or (t.offset + span) * size > nbytes):
            raise FormatError("a tensor's view lies outside its storage")
        if t.requires_grad and not t.dtype.startswith(("float", "bfloat", "complex")):
            raise FormatError("an integer tensor cannot require gradients")
        return {"t": "tensor", "storage": t.storage.index, "offset": t.offset, "shape": list(t.shape),
                "stride": list(t.stride), "dtype": t.dtype, "requires_grad": t.requires_grad}

    def ndarray(self, a: NDArray, d: int) -> dict[str, Any]:
        if a.dtype is None:
            return self.stub_node(Stub("numpy", "ndarray", None, True), d, key=a)
        if len(a.shape) > 64 or any(x >= _MAX_INT for x in a.shape):
            raise FormatError("numpy array shape is out of range")
        if a.objects is not None:
            count = 1
            for x in a.shape:
                count *= x
            if count != len(a.objects):
                raise FormatError("numpy object array has a different number of items than its shape")
            n = self.open(a)
            return {"t": "objarray", "id": n, "shape": list(a.shape), "order": a.order,
                    "items": [self.node(x, d) for x in a.objects]}
        if a.storage is None:
            raw = a.data or b""
            a.storage = self.table.add_output("uint8", len(raw), "cpu", lambda: (raw,))
        n = self.open(a)
        self.closed.add(n)
        return {"t": "ndarray", "id": n, "storage": a.storage.index, "dtype": a.dtype, "shape": list(a.shape),
                "order": a.order}

    def stub_node(self, s: Stub, d: int, key: Any = None) -> dict[str, Any]:
        n = self.open(s if key is None else key)
        out: dict[str, Any] = {"t": "stub", "id": n, "module": s.module, "name": s.name, "called": s.called}
        out["args"] = None if s.args is None else self.node(s.args, d)
        out["kwargs"] = None if s.kwargs is None else self.node(s.kwargs, d)
        out["state"] = None if s.state is None else self.node(s.state, d)
        out["listitems"] = [self.node(x, d) for x in s.listitems]
        out["dictitems"] = [[self.node(k, d), self.node(v, d)] for k, v in s.dictitems]
        return out


def build_manifest(
    fmt: str, root: Any, table: StorageTable, globals_seen: dict[tuple[str, str], int], budgets: Budgets
) -> dict[str, Any]:
    """The manifest for ``root``; registers ndarray bytes embedded in the pickle as output storages."""
    emitter = _Emitter(table, budgets)
    root_node = emitter.node(root, 0)
    for spec in table.specs:
        if spec["source"] is None:
            raise FormatError("a storage the pickle references has no data in the file")
    globals_list = [
        {"module": m, "name": n, "verdict": "data" if (m, n) in ALLOWLIST else "stub", "count": c}
        for (m, n), c in sorted(globals_seen.items())
    ]
    return {"version": 1, "format": fmt, "byteorder": "little", "storages": table.specs, "root": root_node,
            "globals": globals_list}
