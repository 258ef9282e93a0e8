"""Validation of the worker's manifest (``sandbox/PROTOCOL.md``) before anything is built from it.

Everything the worker wrote is treated as hostile: every field's type, every id and reference, every
offset against the verified input and every view against its storage is checked here, with no I/O and no
torch, so that :mod:`safeload._loading.rebuild` only ever sees a manifest whose views are in bounds.
"""

from __future__ import annotations

import argparse
import binascii
import collections
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from safeload._sandbox.worker._common import (
    MAX_DEPTH,
    MAX_NAME,
    MAX_NODES,
    is_attribute,
    is_location,
    is_np_dtype,
)
from safeload._sandbox.worker.protocol import DTYPE_SIZES
from safeload.errors import SandboxError

__all__ = [
    "FLOATING_DTYPES",
    "FORMATS",
    "GlobalRef",
    "Manifest",
    "StorageSpec",
    "np_itemsize",
    "parse_manifest",
]

FORMATS = frozenset(
    {"torch_zip", "torch_legacy", "torch_legacy_tar", "pickle", "npy", "npz", "joblib", "torchscript"}
)
FLOATING_DTYPES = frozenset(
    {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
     "float8_e5m2fnuz", "complex64", "complex128", "complex32"}
)
_OUTPUT_KEY = re.compile(r"^storage_[0-9]{1,9}$")
_MAX_DIMS = 64
# Sizes, offsets, strides and ids all stay below this, so every product torch forms fits in int64.
_MAX_INT = 1 << 62
_MAX_NAME = MAX_NAME
# Values whose identity may be referenced before they are complete (the host creates them empty first).
_MUTABLE = frozenset({"list", "set", "dict", "odict", "namespace", "stub", "bytearray", "objarray"})


@dataclass(frozen=True)
class StorageSpec:
    """One storage: ``nbytes`` bytes of ``dtype`` elements, from the input or from the output file."""

    id: int
    dtype: str
    nbytes: int
    location: str
    kind: Literal["input", "output"]
    offset: int  # for kind == "input"
    key: str  # for kind == "output"
    align: int  # the largest element alignment a tensor over this storage needs


@dataclass(frozen=True)
class GlobalRef:
    """A global the pickle referenced, and whether it became data or a stub."""

    module: str
    name: str
    verdict: Literal["data", "stub"]
    count: int


@dataclass(frozen=True)
class Manifest:
    """A manifest that passed validation. ``root`` is the validated node tree (JSON objects)."""

    format: str
    storages: tuple[StorageSpec, ...]
    root: Any
    globals: tuple[GlobalRef, ...]

    @property
    def stub_globals(self) -> tuple[GlobalRef, ...]:
        return tuple(g for g in self.globals if g.verdict == "stub")


class _Invalid(Exception):
    pass


def np_itemsize(dtype: str) -> int:
    return int(dtype[2:])


def _member(v: Any, names: Collection[str]) -> bool:
    """``v in names`` for a value of any JSON type (lists are unhashable)."""
    return type(v) is str and v in names


def _fail(path: str, msg: str) -> _Invalid:
    return _Invalid(f"{path}: {msg}")


def _int(v: Any, path: str, lo: int = 0) -> int:
    if type(v) is not int or v < lo or v >= _MAX_INT:
        raise _fail(path, f"expected an integer >= {lo} and below 2**62")
    return v


def _str(v: Any, path: str, max_len: int = _MAX_NAME) -> str:
    if type(v) is not str or len(v) > max_len:
        raise _fail(path, "expected a string")
    return v


def _obj(v: Any, path: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if type(v) is not dict:
        raise _fail(path, "expected an object")
    keys = set(v)
    if not required <= keys or not keys <= required | optional:
        raise _fail(path, f"expected fields {sorted(required)} (optional {sorted(optional)}), "
                    f"got {sorted(keys)}")
    return v


def _list(v: Any, path: str) -> list[Any]:
    if type(v) is not list:
        raise _fail(path, "expected a list")
    return v


def _ints(v: Any, path: str) -> list[int]:
    items = _list(v, path)
    if len(items) > _MAX_DIMS:
        raise _fail(path, f"more than {_MAX_DIMS} dimensions")
    for i, x in enumerate(items):
        _int(x, f"{path}[{i}]")
    return items


def _b64(v: Any, path: str) -> None:
    try:
        binascii.a2b_base64(_str(v, path, 1 << 40).encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _fail(path, "not valid base64") from None


def _span(shape: list[int], stride: list[int]) -> int:
    """Elements from the first to one past the last element a view touches (0 if it is empty)."""
    if any(s == 0 for s in shape):
        return 0
    return sum((s - 1) * st for s, st in zip(shape, stride, strict=True)) + 1


def _prod(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _Validator:
    def __init__(self, storages: list[dict[str, Any]], max_nodes: int, max_depth: int) -> None:
        self.storages = storages
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.nodes = 0
        self.ids: dict[int, tuple[str, bool]] = {}  # id -> (node type, complete)
        self.align = [1] * len(storages)
        self.tensor_dtypes: dict[int, str] = {}

    def register(self, node: dict[str, Any], path: str, complete: bool) -> None:
        if "id" not in node:
            return
        n = _int(node["id"], f"{path}.id")
        if n in self.ids:
            raise _fail(path, f"id {n} is defined twice")
        self.ids[n] = (node["t"], complete)

    def complete(self, node: dict[str, Any]) -> None:
        if "id" in node:
            self.ids[node["id"]] = (node["t"], True)

    def storage(self, v: Any, path: str) -> dict[str, Any]:
        sid = _int(v, path)
        if sid >= len(self.storages):
            raise _fail(path, f"storage {sid} does not exist")
        return self.storages[sid]

    def node(self, v: Any, path: str, depth: int) -> str:
        """Validate one node; return its type (for a ref, the type of what it points at)."""
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise _Invalid(f"more than {self.max_nodes} nodes")
        if depth > self.max_depth:
            raise _fail(path, f"nested deeper than {self.max_depth}")
        if type(v) is not dict or type(v.get("t")) is not str:
            raise _fail(path, "expected a node object with a string 't'")
        t: str = v["t"]
        d = depth + 1
        idf = frozenset({"id"})
        if t == "ref":
            _obj(v, path, {"t", "id"})
            n = _int(v["id"], f"{path}.id")
            if n not in self.ids:
                raise _fail(path, f"reference to id {n}, which is not defined before it")
            target, done = self.ids[n]
            if not done and target not in _MUTABLE:
                raise _fail(path, f"reference to the incomplete {target} {n}")
            return target
        if t == "none":
            _obj(v, path, {"t"})
        elif t == "bool":
            _obj(v, path, {"t", "v"})
            if type(v["v"]) is not bool:
                raise _fail(path, "expected a boolean")
        elif t == "int":
            _obj(v, path, {"t", "v"})
            if type(v["v"]) is not int:
                raise _fail(path, "expected an integer")
        elif t == "float":
            _obj(v, path, {"t", "v"})
            self.float(v["v"], f"{path}.v")
        elif t == "complex":
            _obj(v, path, {"t", "re", "im"})
            self.float(v["re"], f"{path}.re")
            self.float(v["im"], f"{path}.im")
        elif t == "str":
            _obj(v, path, {"t", "v"}, idf)
            _str(v["v"], f"{path}.v", 1 << 40)
            self.register(v, path, True)
        elif t in ("bytes", "bytearray"):
            _obj(v, path, {"t", "b64"}, idf)
            _b64(v["b64"], f"{path}.b64")
            self.register(v, path, True)
        elif t in ("list", "set", "tuple", "frozenset"):
            _obj(v, path, {"t", "items"}, idf)
            self.register(v, path, t in _MUTABLE)
            for i, x in enumerate(_list(v["items"], f"{path}.items")):
                self.node(x, f"{path}[{i}]", d)
            self.complete(v)
        elif t in ("dict", "odict"):
            _obj(v, path, {"t", "items"}, idf | ({"attrs"} if t == "odict" else set()))
            self.register(v, path, False)
            self.pairs(v["items"], f"{path}.items", d)
            if "attrs" in v:
                self.attrs(v["attrs"], f"{path}.attrs", d, collections.OrderedDict)
            self.complete(v)
        elif t == "namespace":
            _obj(v, path, {"t", "items"}, idf)
            self.register(v, path, False)
            self.attrs(v["items"], f"{path}.items", d, argparse.Namespace)
            self.complete(v)
        elif t == "slice":
            _obj(v, path, {"t", "start", "stop", "step"}, idf)
            for k in ("start", "stop", "step"):
                if self.node(v[k], f"{path}.{k}", d) not in ("none", "int"):
                    raise _fail(f"{path}.{k}", "slice bounds must be integers or None")
            self.register(v, path, True)
        elif t == "tensor":
            self.tensor(v, path)
        elif t == "parameter":
            _obj(v, path, {"t", "data", "requires_grad"}, idf)
            if self.node(v["data"], f"{path}.data", d) != "tensor":
                raise _fail(f"{path}.data", "a parameter must wrap a tensor")
            if type(v["requires_grad"]) is not bool:
                raise _fail(f"{path}.requires_grad", "expected a boolean")
            data = v["data"]
            dtype = data["dtype"] if data["t"] == "tensor" else self.tensor_dtypes[data["id"]]
            if v["requires_grad"] and dtype not in FLOATING_DTYPES:
                raise _fail(f"{path}.requires_grad", "only floating-point tensors can require gradients")
            self.register(v, path, True)
        elif t == "storage":
            _obj(v, path, {"t", "storage", "dtype"}, idf)
            spec = self.storage(v["storage"], f"{path}.storage")
            if v["dtype"] != spec["dtype"]:
                raise _fail(f"{path}.dtype", "does not match the storage's dtype")
            # A typed storage is as strict about alignment as a tensor of its dtype (see tensor()).
            self.align[spec["id"]] = max(self.align[spec["id"]], DTYPE_SIZES[spec["dtype"]])
            self.register(v, path, True)
        elif t == "ndarray":
            _obj(v, path, {"t", "storage", "dtype", "shape", "order"}, idf)
            spec = self.storage(v["storage"], f"{path}.storage")
            dtype = _str(v["dtype"], f"{path}.dtype", 8)
            if not is_np_dtype(dtype):
                raise _fail(f"{path}.dtype", f"{dtype!r} is not a plain numeric numpy dtype")
            shape = _ints(v["shape"], f"{path}.shape")
            if v["order"] not in ("C", "F"):
                raise _fail(f"{path}.order", "expected 'C' or 'F'")
            if _prod(shape) * np_itemsize(dtype) > spec["nbytes"]:
                raise _fail(path, "array is larger than its storage")
            self.register(v, path, True)
        elif t == "objarray":
            _obj(v, path, {"t", "shape", "order", "items"}, idf)
            shape = _ints(v["shape"], f"{path}.shape")
            if v["order"] not in ("C", "F"):
                raise _fail(f"{path}.order", "expected 'C' or 'F'")
            items = _list(v["items"], f"{path}.items")
            if len(items) != _prod(shape):
                raise _fail(path, "object array has a different number of items than its shape")
            self.register(v, path, False)
            for i, x in enumerate(items):
                self.node(x, f"{path}[{i}]", d)
            self.complete(v)
        elif t == "npscalar":
            _obj(v, path, {"t", "dtype", "b64"})
            dtype = _str(v["dtype"], f"{path}.dtype", 8)
            if not is_np_dtype(dtype):
                raise _fail(f"{path}.dtype", f"{dtype!r} is not a plain numeric numpy dtype")
            _b64(v["b64"], f"{path}.b64")
            if len(binascii.a2b_base64(v["b64"])) != np_itemsize(dtype):
                raise _fail(path, "scalar bytes do not match its dtype")
        elif t == "torch_dtype":
            _obj(v, path, {"t", "v"})
            if not _member(v["v"], DTYPE_SIZES):
                raise _fail(f"{path}.v", "unknown torch dtype")
        elif t == "torch_size":
            _obj(v, path, {"t", "items"}, idf)
            _ints(v["items"], f"{path}.items")
            self.register(v, path, True)
        elif t == "torch_device":
            _obj(v, path, {"t", "v"})
            if not is_location(_str(v["v"], f"{path}.v", 64)):
                raise _fail(f"{path}.v", "not a device string")
        elif t == "np_dtype":
            _obj(v, path, {"t", "v"})
            if not is_np_dtype(_str(v["v"], f"{path}.v", 8)):
                raise _fail(f"{path}.v", "not a plain numeric numpy dtype")
        elif t == "stub":
            self.stub(v, path, d)
        else:
            raise _fail(path, f"unknown node type {t!r}")
        return t

    def float(self, v: Any, path: str) -> None:
        try:
            float.fromhex(_str(v, path, 64))
        except ValueError:
            raise _fail(path, "not a float.hex() string") from None

    def pairs(self, v: Any, path: str, d: int) -> None:
        for i, pair in enumerate(_list(v, path)):
            if type(pair) is not list or len(pair) != 2:
                raise _fail(f"{path}[{i}]", "expected a [key, value] pair")
            self.node(pair[0], f"{path}[{i}][0]", d)
            self.node(pair[1], f"{path}[{i}][1]", d)

    def attrs(self, v: Any, path: str, d: int, cls: type) -> None:
        for i, pair in enumerate(_list(v, path)):
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise _fail(f"{path}[{i}]", "expected a [name, value] pair")
            # No dunders, and nothing that would shadow a method (``sd.items = ...``) of the built object.
            if not is_attribute(pair[0]) or hasattr(cls, pair[0]):
                raise _fail(f"{path}[{i}]", f"attribute name {pair[0][:64]!r} is not allowed")
            self.node(pair[1], f"{path}[{i}][1]", d)

    def tensor(self, v: dict[str, Any], path: str) -> None:
        fields = {"t", "storage", "offset", "shape", "stride", "dtype", "requires_grad"}
        _obj(v, path, fields, frozenset({"id"}))
        spec = self.storage(v["storage"], f"{path}.storage")
        dtype = v["dtype"]
        if not _member(dtype, DTYPE_SIZES):
            raise _fail(f"{path}.dtype", "unknown torch dtype")
        offset = _int(v["offset"], f"{path}.offset")
        shape = _ints(v["shape"], f"{path}.shape")
        stride = _ints(v["stride"], f"{path}.stride")
        if len(shape) != len(stride):
            raise _fail(path, "shape and stride have different lengths")
        if type(v["requires_grad"]) is not bool:
            raise _fail(f"{path}.requires_grad", "expected a boolean")
        if v["requires_grad"] and dtype not in FLOATING_DTYPES:
            raise _fail(f"{path}.requires_grad", "only floating-point tensors can require gradients")
        size = DTYPE_SIZES[dtype]
        # Zero dimensions are left out: torch multiplies the others out too, and overflows on an empty
        # tensor whose remaining dimensions do.
        if _prod([n for n in shape if n]) * size >= _MAX_INT:
            raise _fail(path, "tensor has more elements than any storage can hold")
        if (offset + _span(shape, stride)) * size > spec["nbytes"]:
            raise _fail(path, f"view reaches past the end of storage {spec['id']}")
        # c10::complex<double> is alignas(16): torch's kernels crash on complex128 at 8 mod 16 (indexing
        # segfaults on x86_64), so every dtype needs its full item size.
        self.align[spec["id"]] = max(self.align[spec["id"]], size)
        self.register(v, path, True)
        if "id" in v:
            self.tensor_dtypes[v["id"]] = dtype

    def stub(self, v: dict[str, Any], path: str, d: int) -> None:
        _obj(v, path, {"t", "id", "module", "name", "called", "args", "kwargs", "state", "listitems",
                       "dictitems"})
        _str(v["module"], f"{path}.module")
        _str(v["name"], f"{path}.name")
        if type(v["called"]) is not bool:
            raise _fail(f"{path}.called", "expected a boolean")
        self.register(v, path, False)
        if v["args"] is not None and self.node(v["args"], f"{path}.args", d) != "tuple":
            raise _fail(f"{path}.args", "expected a tuple")
        if v["kwargs"] is not None and self.node(v["kwargs"], f"{path}.kwargs", d) != "dict":
            raise _fail(f"{path}.kwargs", "expected a dict")
        if v["state"] is not None:
            self.node(v["state"], f"{path}.state", d)
        for i, x in enumerate(_list(v["listitems"], f"{path}.listitems")):
            self.node(x, f"{path}.listitems[{i}]", d)
        self.pairs(v["dictitems"], f"{path}.dictitems", d)
        self.complete(v)


class _Fallback(Exception):
    """The fast pass met a node it does not handle or a check that failed: validate the slow way."""


_K_T = frozenset({"t"})
_K_V = frozenset({"t", "v"})
_K_V_ID = frozenset({"t", "v", "id"})
_K_ITEMS = frozenset({"t", "items"})
_K_ITEMS_ID = frozenset({"t", "items", "id"})
_K_REF = frozenset({"t", "id"})
_K_TENSOR = frozenset({"t", "storage", "offset", "shape", "stride", "dtype", "requires_grad"})
_K_TENSOR_ID = _K_TENSOR | {"id"}
_K_PARAM = frozenset({"t", "data", "requires_grad"})
_K_PARAM_ID = _K_PARAM | {"id"}


class _FastValidator(_Validator):
    """The same checks as :class:`_Validator` for the nodes state dicts are made of, without building
    error paths. It accepts a subset of what the full validator accepts; on anything else, or any failed
    check, it raises :class:`_Fallback` and the full validator runs from scratch (and names the error).
    """

    def fast(self, v: Any, depth: int) -> str:
        self.nodes += 1
        if self.nodes > self.max_nodes or depth > self.max_depth or type(v) is not dict:
            raise _Fallback
        t = v.get("t")
        keys = v.keys()
        if type(t) is not str:
            raise _Fallback
        if t == "tensor":
            if keys != _K_TENSOR and keys != _K_TENSOR_ID:
                raise _Fallback
            self.fast_tensor(v)
            return t
        if t == "ref":
            if keys != _K_REF:
                raise _Fallback
            n = v["id"]
            if type(n) is not int or n not in self.ids:
                raise _Fallback
            target, done = self.ids[n]
            if not done and target not in _MUTABLE:
                raise _Fallback
            return target
        d = depth + 1
        if t == "str":
            if (keys != _K_V and keys != _K_V_ID) or type(v["v"]) is not str:
                raise _Fallback
            self.fast_register(v, t, True)
        elif t == "int":
            if keys != _K_V or type(v["v"]) is not int:
                raise _Fallback
        elif t == "bool":
            if keys != _K_V or type(v["v"]) is not bool:
                raise _Fallback
        elif t == "none":
            if keys != _K_T:
                raise _Fallback
        elif t in ("dict", "odict"):
            items = v["items"]
            if (keys != _K_ITEMS and keys != _K_ITEMS_ID) or type(items) is not list:
                raise _Fallback
            self.fast_register(v, t, False)
            fast = self.fast
            for pair in items:
                if type(pair) is not list or len(pair) != 2:
                    raise _Fallback
                fast(pair[0], d)
                fast(pair[1], d)
            self.complete(v)
        elif t in ("list", "tuple"):
            items = v["items"]
            if (keys != _K_ITEMS and keys != _K_ITEMS_ID) or type(items) is not list:
                raise _Fallback
            self.fast_register(v, t, t == "list")
            for x in items:
                self.fast(x, d)
            self.complete(v)
        elif t == "parameter":
            rg = v["requires_grad"]
            if (keys != _K_PARAM and keys != _K_PARAM_ID) or type(rg) is not bool:
                raise _Fallback
            if self.fast(v["data"], d) != "tensor":
                raise _Fallback
            data = v["data"]
            dtype = data["dtype"] if data["t"] == "tensor" else self.tensor_dtypes[data["id"]]
            if rg and dtype not in FLOATING_DTYPES:
                raise _Fallback
            self.fast_register(v, t, True)
        else:
            raise _Fallback
        return str(t)

    def fast_register(self, v: dict[str, Any], t: str, complete: bool) -> None:
        if "id" not in v:
            return
        n = v["id"]
        if type(n) is not int or not 0 <= n < _MAX_INT or n in self.ids:
            raise _Fallback
        self.ids[n] = (t, complete)

    def fast_tensor(self, v: dict[str, Any]) -> None:
        sid, dtype, offset, shape, stride = v["storage"], v["dtype"], v["offset"], v["shape"], v["stride"]
        if (type(sid) is not int or not 0 <= sid < len(self.storages) or type(dtype) is not str
                or dtype not in DTYPE_SIZES or type(offset) is not int or not 0 <= offset < _MAX_INT
                or type(shape) is not list or type(stride) is not list or len(shape) != len(stride)
                or len(shape) > _MAX_DIMS):
            raise _Fallback
        size = DTYPE_SIZES[dtype]
        numel = size
        span = 1
        for n, st in zip(shape, stride, strict=True):
            if type(n) is not int or type(st) is not int or not 0 <= n < _MAX_INT or not 0 <= st < _MAX_INT:
                raise _Fallback
            if n:
                numel *= n
            span += (n - 1) * st
        if 0 in shape:
            span = 0
        rg = v["requires_grad"]
        if (type(rg) is not bool or (rg and dtype not in FLOATING_DTYPES) or numel >= _MAX_INT
                or (offset + span) * size > self.storages[sid]["nbytes"]):
            raise _Fallback
        if size > self.align[sid]:
            self.align[sid] = size
        if "id" in v:
            self.fast_register(v, "tensor", True)
            self.tensor_dtypes[v["id"]] = dtype


def _storages(raw: Any, input_size: int, outputs: Mapping[str, int]) -> list[dict[str, Any]]:
    specs = _list(raw, "storages")
    keys_seen: set[str] = set()
    for i, s in enumerate(specs):
        path = f"storages[{i}]"
        _obj(s, path, {"id", "dtype", "nbytes", "location", "source"})
        if s["id"] != i:
            raise _fail(f"{path}.id", "storage ids must be 0, 1, 2, ... in order")
        if not _member(s["dtype"], DTYPE_SIZES):
            raise _fail(f"{path}.dtype", "unknown torch dtype")
        nbytes = _int(s["nbytes"], f"{path}.nbytes")
        if nbytes % DTYPE_SIZES[s["dtype"]]:
            raise _fail(f"{path}.nbytes", "not a whole number of elements")
        if not is_location(_str(s["location"], f"{path}.location", 64)):
            raise _fail(f"{path}.location", "not a device string")
        src = s["source"]
        if type(src) is not dict:
            raise _fail(f"{path}.source", "expected an object")
        if src.get("kind") == "input":
            _obj(src, f"{path}.source", {"kind", "offset", "length"})
            offset = _int(src["offset"], f"{path}.source.offset")
            if src["length"] != nbytes or offset + nbytes > input_size:
                raise _fail(f"{path}.source", "byte range lies outside the input file")
        elif src.get("kind") == "output":
            _obj(src, f"{path}.source", {"kind", "key"})
            key = _str(src["key"], f"{path}.source.key", 32)
            if not _OUTPUT_KEY.match(key) or key in keys_seen:
                raise _fail(f"{path}.source.key", "malformed or repeated output key")
            keys_seen.add(key)
            if outputs.get(key) != nbytes:
                raise _fail(f"{path}.source", "the output file has no byte vector of this size and key")
        else:
            raise _fail(f"{path}.source.kind", "expected 'input' or 'output'")
    if keys_seen != set(outputs):
        raise _Invalid("the output file holds tensors the manifest does not describe")
    return specs


def _globals(raw: Any) -> tuple[GlobalRef, ...]:
    out = []
    for i, g in enumerate(_list(raw, "globals")):
        path = f"globals[{i}]"
        _obj(g, path, {"module", "name", "verdict", "count"})
        if g["verdict"] not in ("data", "stub"):
            raise _fail(f"{path}.verdict", "expected 'data' or 'stub'")
        out.append(GlobalRef(_str(g["module"], f"{path}.module"), _str(g["name"], f"{path}.name"),
                             g["verdict"], _int(g["count"], f"{path}.count", 1)))
    return tuple(out)


def parse_manifest(
    raw: bytes,
    *,
    input_size: int,
    outputs: Mapping[str, int],
    max_nodes: int = MAX_NODES,
    max_depth: int = MAX_DEPTH,
) -> Manifest:
    """Parse and validate a manifest.

    ``outputs`` maps each tensor name in the worker's ``tensors.safetensors`` to its byte size (every
    one must be a uint8 vector); ``input_size`` is the size of the verified input the host opened.

    Raises:
        SandboxError: the manifest is malformed or describes anything out of bounds.
    """
    # Every node is a JSON object and containers add a list or two: far more brackets than the node
    # budget allows means a document built to exhaust the host's memory while it is parsed.
    if raw.count(b"{") + raw.count(b"[") > 4 * max_nodes + 1024:
        raise SandboxError(f"the sandboxed worker returned a manifest with more than {max_nodes} nodes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SandboxError(f"the sandboxed worker returned a manifest that is not JSON ({exc})") from None
    try:
        _obj(doc, "manifest", {"version", "format", "storages", "root", "globals", "byteorder"})
        if doc["version"] != 1:
            raise _fail("version", "only version 1 is understood")
        if not _member(doc["format"], FORMATS):
            raise _fail("format", "unknown format")
        if doc["byteorder"] != "little":
            raise _fail("byteorder", "only little-endian storages are supported")
        specs = _storages(doc["storages"], input_size, outputs)
        gl = _globals(doc["globals"])
        v: _Validator = _FastValidator(specs, max_nodes, max_depth)
        try:
            assert isinstance(v, _FastValidator)
            v.fast(doc["root"], 0)
        except (_Fallback, KeyError, TypeError, RecursionError):
            v = _Validator(specs, max_nodes, max_depth)
            v.node(doc["root"], "root", 0)
    except _Invalid as exc:
        raise SandboxError(
            f"the sandboxed worker returned an invalid manifest ({exc}); nothing was loaded. "
            "The artifact may be crafted to attack the loader; do not load it by other means."
        ) from None
    storages = tuple(
        StorageSpec(
            id=s["id"], dtype=s["dtype"], nbytes=s["nbytes"], location=s["location"],
            kind=s["source"]["kind"],
            offset=s["source"].get("offset", 0), key=s["source"].get("key", ""), align=v.align[s["id"]],
        )
        for s in specs
    )
    return Manifest(format=doc["format"], storages=storages, root=doc["root"], globals=gl)
