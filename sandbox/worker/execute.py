"""Execute mode: run the checkpoint's own code with real ``torch.load``, then export plain data.

This runs only inside the jail, for checkpoints the caller chose to load with ``unpickler="execute"``
(objects rebuilt in code). Whatever the checkpoint's code does stays in the jail; this module's job is to
walk the object it produced and write what PROTOCOL.md allows back: ``/out/tensors.safetensors`` (one
``U8`` entry per storage, so aliasing and views survive) and ``/out/manifest.json`` (written last).

The checkpoint's code runs in this very process and may have tampered with anything here, including
this module; the host therefore validates every byte written, and this module only tries not to make
that validation's job harder. Everything it needs from the standard library is bound before the load.
"""

from __future__ import annotations

import base64
import contextlib
import json
import mmap
import os
import re
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO, Literal

# The inert worker's budgets, which the host validates every manifest against: a result bigger than
# this is a bomb, not a model.
from ._common import MAX_DEPTH, MAX_NODES, write_error, write_u8_safetensors
from .protocol import DTYPE_SIZES

__all__ = ["main"]

_DEFAULT_INPUT = "/in/artifact"
_DEFAULT_OUTPUT = "/out"
_DEFAULT_MAX_OUTPUT = 64 << 30


# The numpy dtypes PROTOCOL.md allows for ndarray, npscalar and np_dtype nodes (plain numeric only).
_NP_DTYPE = re.compile(r"^(\|b1|\|[iu]1|[<>][iu](2|4|8)|[<>]f(2|4|8)|[<>]c(8|16))$")
_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"

_TORCH_DTYPES = frozenset(DTYPE_SIZES)

# numpy dtype str (native little-endian) -> torch dtype name, for the storage an ndarray views.
_NUMPY_TO_TORCH = {
    "<f8": "float64", "<f4": "float32", "<f2": "float16", "<i8": "int64", "<i4": "int32", "<i2": "int16",
    "|i1": "int8", "|u1": "uint8", "<u2": "uint16", "<u4": "uint32", "<u8": "uint64", "|b1": "bool",
    "<c8": "complex64", "<c16": "complex128",
}


_CONTAINERS: dict[type, str] = {list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}


class _LimitError(Exception):
    """The loaded object exceeds the node or depth budget."""


class _FormatError(Exception):
    """The input is not a format execute mode can open."""


def _detect(head: bytes, path: str) -> str:
    """Name the container format from content (never from a file name)."""
    if head.startswith(_ZIP_MAGIC) or head.startswith(b"PK\x05\x06"):
        try:
            with _open(path) as fh, zipfile.ZipFile(fh) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            # torch's own reader is more lenient than zipfile; let it decide.
            return "torch_zip"
        pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pkls:
            return "npz"
        # As the inert reader decides: a constants.pkl or code/ folder beside data.pkl is TorchScript.
        prefix = pkls[0][: -len("data.pkl")]
        if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
            return "torchscript"
        return "torch_zip"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head[2:14] == _LEGACY_MAGIC:
        return "torch_legacy"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "torch_legacy_tar"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c", b"I", b"L", b"S", b"V", b"N", b"F"):
        return "joblib" if _looks_like_joblib(path) else "pickle"
    raise _FormatError("execute mode opens torch, numpy, joblib and pickle files; this is none of them")


def _open(src: str) -> BinaryIO:
    """The artifact as a file object at offset 0 (``fd:N``: a descriptor the launcher handed in)."""
    from ._common import open_input

    return os.fdopen(open_input(src), "rb")


def _looks_like_joblib(path: str) -> bool:
    with _open(path) as fh:
        return b"joblib.numpy_pickle" in fh.read(1 << 20)


def _load(path: str, fmt: str, locations: dict[int, str], encoding: str = "utf-8") -> Any:
    """Load with the real loaders, recording each storage's saved device in ``locations``.

    ``encoding`` decodes Python 2 strings, as ``pickle.load`` and ``torch.load`` take it (numpy takes
    only ``ASCII``, ``latin1`` and ``bytes``; joblib and TorchScript take none).
    """
    if fmt in ("npy", "npz"):
        import numpy

        np_encoding: Literal["ASCII", "latin1", "bytes"] = "ASCII"
        if encoding in ("latin1", "latin-1", "iso8859-1"):
            np_encoding = "latin1"
        elif encoding == "bytes":
            np_encoding = "bytes"
        with _open(path) as fh:
            loaded = numpy.load(fh, allow_pickle=True, encoding=np_encoding)
            if isinstance(loaded, numpy.lib.npyio.NpzFile):
                with loaded:
                    return {name: loaded[name] for name in loaded.files}
            return loaded
    if fmt == "joblib":
        try:
            import joblib  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            fmt = "pickle"
        else:
            with _open(path) as fh:
                return joblib.load(fh)
    if fmt == "pickle":
        # No torch import up front: the stream imports what it names, and most raw pickles name no torch.
        import pickle

        with _open(path) as fh:
            return pickle.load(fh, encoding=encoding)
    import torch

    def remember(storage: Any, location: str) -> Any:
        # A storage type without a pointer keeps the default location.
        with contextlib.suppress(Exception):
            locations[int(storage.data_ptr())] = str(location)
        return storage

    with _open(path) as fh:
        if fmt == "torchscript":
            return _script_module(torch.jit.load(fh, map_location="cpu"))  # type: ignore[no-untyped-call]
        return torch.load(fh, map_location=remember, weights_only=False, encoding=encoding)


class _ScriptStub:
    """A TorchScript module as the plain state ``safeload.state_dict`` reads."""

    def __init__(self, module: str, name: str, state: dict[str, Any]) -> None:
        self.module, self.name, self.state = module, name, state


def _script_module(mod: Any) -> Any:
    """Rebuild a loaded ScriptModule's tree as stubs with ``_parameters``/``_buffers``/``_modules``."""
    try:
        qualified = str(mod._c._type().qualified_name())
    except Exception:
        qualified = f"__torch__.{type(mod).__qualname__}"
    module, _, name = qualified.rpartition(".")
    state = {
        "training": bool(getattr(mod, "training", False)),
        "_parameters": OrderedDict(mod.named_parameters(recurse=False)),
        "_buffers": OrderedDict(mod.named_buffers(recurse=False)),
        "_modules": OrderedDict((k, _script_module(v)) for k, v in mod.named_children()),
    }
    return _ScriptStub(module, name, state)


class _Exporter:
    """Turns a loaded object into PROTOCOL.md nodes plus a list of storages to write."""

    def __init__(self, locations: dict[int, str]) -> None:
        self._locations = locations
        self._ids: dict[int, int] = {}
        self._keep: list[Any] = []  # keeps objects alive so id() values stay unique during the walk
        self._nodes = 0
        self.storages: list[dict[str, Any]] = []
        # (safetensors key, uint8 numpy view or bytes, element alignment)
        self.payloads: list[tuple[str, Any, int]] = []
        self._storage_ids: dict[tuple[int, int, str], int] = {}
        self.globals: dict[tuple[str, str], int] = {}

    # -- identity -------------------------------------------------------------------------------
    def _seen(self, obj: Any) -> dict[str, Any] | None:
        ident = self._ids.get(id(obj))
        return None if ident is None else {"t": "ref", "id": ident}

    def _open(self, obj: Any, node: dict[str, Any]) -> dict[str, Any]:
        ident = len(self._ids)
        self._ids[id(obj)] = ident
        self._keep.append(obj)
        node["id"] = ident
        return node

    # -- storages -------------------------------------------------------------------------------
    def _add_storage(
        self, key: tuple[int, int, str], dtype: str, nbytes: int, location: str, data: Any
    ) -> int:
        sid = self._storage_ids.get(key)
        if sid is not None:
            return sid
        sid = len(self.storages)
        self._storage_ids[key] = sid
        name = f"storage_{sid}"
        self.storages.append(
            {"id": sid, "dtype": dtype, "nbytes": nbytes, "location": location,
             "source": {"kind": "output", "key": name}}
        )
        self.payloads.append((name, data, min(DTYPE_SIZES[dtype], 8)))
        return sid

    def _tensor_storage(self, tensor: Any, dtype: str) -> int:
        import torch

        storage = tensor.untyped_storage()
        nbytes = int(storage.nbytes())
        ptr = int(storage.data_ptr())
        # Empty storages all share pointer 0; they alias nothing.
        key = (ptr, nbytes, "") if ptr else (-len(self.storages) - 1, 0, "")
        location = self._locations.get(ptr, "cpu")
        storage_dtype = dtype if nbytes % DTYPE_SIZES[dtype] == 0 else "uint8"
        existing = self._storage_ids.get(key)
        if existing is not None:
            return existing
        data = torch.empty(0, dtype=torch.uint8).set_(storage).numpy() if nbytes else b""
        return self._add_storage(key, storage_dtype, nbytes, location, data)

    # -- nodes ----------------------------------------------------------------------------------
    def node(self, obj: Any, depth: int = 0) -> dict[str, Any]:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _LimitError(f"the loaded object has more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise _LimitError(f"the loaded object is nested deeper than {MAX_DEPTH} levels")
        if obj is None:
            return {"t": "none"}
        if obj is True or obj is False:
            return {"t": "bool", "v": bool(obj)}
        t = type(obj)
        if t is int:
            return {"t": "int", "v": int(obj)}
        if t is float:
            return {"t": "float", "v": float.hex(obj)}
        if t is complex:
            return {"t": "complex", "re": float.hex(obj.real), "im": float.hex(obj.imag)}
        if t is str:
            return {"t": "str", "v": str.__str__(obj)}
        if t is bytes:
            return {"t": "bytes", "b64": base64.b64encode(obj).decode("ascii")}
        ref = self._seen(obj)
        if ref is not None:
            return ref
        special = self._special(obj, depth)
        if special is not None:
            return special
        if t is bytearray:
            return self._open(obj, {"t": "bytearray", "b64": base64.b64encode(bytes(obj)).decode("ascii")})
        if t is list or t is set:
            # Mutable: registered before its items, so an item may refer back to it.
            node = self._open(obj, {"t": _CONTAINERS[t]})
            node["items"] = [self.node(v, depth + 1) for v in list(obj)]
            return node
        if t is tuple or t is frozenset:
            # Immutable: registered after its items (PROTOCOL.md); a cycle through it hits the depth budget.
            items = [self.node(v, depth + 1) for v in list(obj)]
            return self._open(obj, {"t": _CONTAINERS[t], "items": items})
        if t is dict or t is OrderedDict:
            node = self._open(obj, {"t": "dict" if t is dict else "odict"})
            node["items"] = [[self.node(k, depth + 1), self.node(v, depth + 1)] for k, v in list(obj.items())]
            attrs = _instance_attrs(obj) if t is OrderedDict else {}
            if attrs:
                # e.g. the ``_metadata`` nn.Module.state_dict() attaches
                node["attrs"] = [[k, self.node(v, depth + 1)] for k, v in attrs.items()]
            return node
        if t is slice and all(type(b) in (int, type(None)) for b in (obj.start, obj.stop, obj.step)):
            bounds = {k: self.node(getattr(obj, k), depth + 1) for k in ("start", "stop", "step")}
            return self._open(obj, {"t": "slice", **bounds})
        return self._stub(obj, depth)

    def _special(self, obj: Any, depth: int) -> dict[str, Any] | None:
        """Nodes for torch, numpy and argparse values; None when ``obj`` is none of them."""
        mod = type(obj).__module__ or ""
        if mod.startswith("torch"):
            return self._torch(obj, depth)
        if mod.startswith("numpy"):
            return self._numpy(obj, depth)
        if mod == "argparse" and type(obj).__name__ == "Namespace":
            node = self._open(obj, {"t": "namespace"})
            node["items"] = [[str(k), self.node(v, depth + 1)] for k, v in list(vars(obj).items())]
            return node
        return None

    def _torch(self, obj: Any, depth: int) -> dict[str, Any] | None:
        import torch

        t = type(obj)
        if t is torch.dtype:
            name = str(obj).removeprefix("torch.")
            return {"t": "torch_dtype", "v": name} if name in _TORCH_DTYPES else None
        if t is torch.Size:
            return {"t": "torch_size", "items": [int(v) for v in obj]}
        if t is torch.device:
            return {"t": "torch_device", "v": str(obj)}
        if t is torch.nn.Parameter:
            data = self._tensor(obj.data, register=False)
            if data is None:
                return None
            return self._open(obj, {"t": "parameter", "data": data, "requires_grad": bool(obj.requires_grad)})
        if isinstance(obj, torch.Tensor):
            # Subclasses come back as plain tensors: their class's code is not data.
            return self._tensor(obj, register=True)
        if isinstance(obj, torch.storage.TypedStorage):
            dtype, raw = str(obj.dtype).removeprefix("torch."), obj.untyped()  # type: ignore[no-untyped-call]
        elif isinstance(obj, torch.UntypedStorage):
            dtype, raw = "uint8", obj
        else:
            return None
        if dtype in _TORCH_DTYPES and raw.device.type == "cpu":
            view = torch.empty(0, dtype=getattr(torch, dtype)).set_(raw)
            sid = self._tensor_storage(view, dtype)
            if self.storages[sid]["dtype"] == dtype:
                return self._open(obj, {"t": "storage", "storage": sid, "dtype": dtype})
        return None

    def _tensor(self, tensor: Any, *, register: bool) -> dict[str, Any] | None:
        import torch

        dtype = str(tensor.dtype).removeprefix("torch.")
        if (
            dtype not in _TORCH_DTYPES
            or tensor.layout != torch.strided
            or tensor.device.type != "cpu"
            or tensor.is_quantized
        ):
            return None
        node = {
            "t": "tensor",
            "storage": self._tensor_storage(tensor, dtype),
            "offset": int(tensor.storage_offset()),
            "shape": [int(s) for s in tensor.shape],
            "stride": [int(s) for s in tensor.stride()],
            "dtype": dtype,
            "requires_grad": bool(tensor.requires_grad),
        }
        return self._open(tensor, node) if register else node

    def _numpy(self, obj: Any, depth: int) -> dict[str, Any] | None:
        import numpy

        if isinstance(obj, numpy.dtype):
            return {"t": "np_dtype", "v": obj.str} if _NP_DTYPE.match(obj.str) else None
        if isinstance(obj, numpy.generic):
            if not _NP_DTYPE.match(obj.dtype.str):
                return None
            raw_scalar = base64.b64encode(obj.tobytes()).decode("ascii")
            return {"t": "npscalar", "dtype": obj.dtype.str, "b64": raw_scalar}
        if type(obj) is numpy.ndarray and obj.dtype.hasobject and obj.dtype.fields is None:
            node = self._open(obj, {"t": "objarray", "shape": [int(s) for s in obj.shape], "order": "C"})
            node["items"] = [self.node(v, depth + 1) for v in obj.reshape(-1, order="C").tolist()]
            return node
        if type(obj) is numpy.ndarray and _NP_DTYPE.match(obj.dtype.str):
            order: Literal["C", "F"] = "F" if obj.flags.f_contiguous and not obj.flags.c_contiguous else "C"
            arr = numpy.asarray(obj, order=order)
            if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
                arr = numpy.ascontiguousarray(arr)
            raw = arr.reshape(-1, order="A").view(numpy.uint8) if arr.size else b""
            dtype = _NUMPY_TO_TORCH.get(arr.dtype.str, "uint8")
            key = (-len(self.storages) - 1, 0, "np")
            sid = self._add_storage(key, dtype, int(arr.nbytes), "cpu", raw)
            return self._open(obj, {"t": "ndarray", "storage": sid, "dtype": arr.dtype.str,
                                    "shape": [int(s) for s in arr.shape], "order": order})
        return None

    # -- everything else ------------------------------------------------------------------------
    def _stub(self, obj: Any, depth: int) -> dict[str, Any]:
        """Export a non-data object as its class name plus its state (``__dict__``, slots, items)."""
        import types

        if type(obj) is _ScriptStub:
            self._count(obj.module, obj.name)
            node = self._open(obj, {"t": "stub", "module": obj.module, "name": obj.name, "called": True,
                                    "args": None, "kwargs": None, "listitems": [], "dictitems": []})
            node["state"] = self.node(obj.state, depth + 1)
            return node

        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
            module, name = _qualname(obj)
            self._count(module, name)
            return self._open(obj, {"t": "stub", "module": module, "name": name, "called": False,
                                    "args": None, "kwargs": None, "state": None, "listitems": [],
                                    "dictitems": []})
        module, name = _qualname(type(obj))
        self._count(module, name)
        node = self._open(obj, {"t": "stub", "module": module, "name": name, "called": True, "args": None,
                                "kwargs": None})
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # no __dict__ (slots, builtins)
            state.update(object.__getattribute__(obj, "__dict__"))
        for klass in type(obj).__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for slot in slots if isinstance(slots, (tuple, list)) else ():
                if isinstance(slot, str) and slot not in ("__dict__", "__weakref__"):
                    with contextlib.suppress(Exception):  # an unset slot is simply absent
                        state[slot] = object.__getattribute__(obj, slot)
        if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
            # An array the protocol has no node for (datetimes, strings, records): keep its elements.
            with contextlib.suppress(Exception):
                state = {"shape": list(getattr(obj, "shape", ())), "items": obj.tolist()}
        node["state"] = self.node(state, depth + 1) if state else None
        node["listitems"] = (
            [self.node(v, depth + 1) for v in list.__iter__(obj)] if isinstance(obj, list) else []
        )
        node["dictitems"] = (
            [[self.node(k, depth + 1), self.node(v, depth + 1)] for k, v in list(dict.items(obj))]
            if isinstance(obj, dict) else []
        )
        return node

    def _count(self, module: str, name: str) -> None:
        self.globals[(module, name)] = self.globals.get((module, name), 0) + 1


def _instance_attrs(obj: Any) -> dict[str, Any]:
    """Instance attributes PROTOCOL.md lets an odict carry (identifiers, no dunders)."""
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return {k: v for k, v in list(attrs.items())
            if isinstance(k, str) and _ATTR.match(k) and not k.startswith("__")}


def _qualname(obj: Any) -> tuple[str, str]:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return (module if isinstance(module, str) else "builtins", name if isinstance(name, str) else "?")


def _stream_globals(path: str, encoding: str = "utf-8") -> list[dict[str, Any]] | None:
    """Every global the artifact's pickle streams name, read inertly before any of its code runs.

    Execute mode reports the same ``globals`` list the inert path would (what the checkpoint tried to
    import), not just the classes that survived into the result. None when the inert reader cannot
    read the file (the load itself may still succeed: torch's readers are more lenient).
    """
    try:
        from ._allowlist import ALLOWLIST
        from ._common import Budgets
        from ._formats import parse

        with _open(path) as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            parsed, _table = parse(data, Budgets(), encoding)
    except Exception:  # the inert reader refusing a file is not an execute-mode failure
        return None
    return [
        {"module": m, "name": n, "verdict": "data" if (m, n) in ALLOWLIST else "stub", "count": c}
        for (m, n), c in sorted(parsed.globals_seen.items())
    ]


def _write_safetensors(path: str, payloads: list[tuple[str, Any, int]], max_bytes: int) -> None:
    """Write the storages as ``U8`` tensors, streaming each from its own memory (no second copy), in
    order of decreasing element alignment (see :func:`write_u8_safetensors`)."""
    ordered = sorted(payloads, key=lambda p: -p[2])
    sizes = [len(data) if isinstance(data, bytes) else int(data.nbytes) for _, data, _ in ordered]
    if sum(sizes) > max_bytes:
        raise _LimitError(f"the tensors need {sum(sizes)} bytes, more than the output limit of {max_bytes}")

    def chunks(data: Any) -> Callable[[], list[Any]]:
        return lambda: [data if isinstance(data, bytes) else memoryview(data).cast("B")]

    storages = [(name, n, chunks(data)) for (name, data, _), n in zip(ordered, sizes, strict=True)]
    write_u8_safetensors(path, storages)


def _write_json_atomically(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, separators=(",", ":"))
    os.replace(tmp, path)


def _missing_module(exc: BaseException) -> str | None:
    """The module a failed load could not import, when that is why it failed (None otherwise)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ModuleNotFoundError) and isinstance(cur.name, str) and cur.name:
            return cur.name
        cur = cur.__cause__ or cur.__context__
    return None


def _parse_args(argv: list[str]) -> tuple[str, str, int]:
    """``--in PATH --out DIR --max-output BYTES`` as the worker entry point passes them (``--mode`` and
    ``--encoding``, read by :func:`_encoding`, aside), or input and output positionally."""
    opts: dict[str, str] = {}
    positional: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            opts[key] = value if sep else next(it, "")
        else:
            positional.append(arg)
    src = opts.get("in") or (positional[0] if positional else _DEFAULT_INPUT)
    out = opts.get("out") or (positional[1] if len(positional) > 1 else _DEFAULT_OUTPUT)
    max_output = opts.get("max-output", "")
    return src, out, int(max_output) if max_output.isdigit() else _DEFAULT_MAX_OUTPUT


def _encoding(argv: list[str]) -> str:
    """``--encoding NAME`` (default ``utf-8``), as ``pickle.load`` takes it."""
    for i, arg in enumerate(argv):
        if arg == "--encoding" and i + 1 < len(argv):
            return argv[i + 1] or "utf-8"
        if arg.startswith("--encoding="):
            return arg.partition("=")[2] or "utf-8"
    return "utf-8"


def main(argv: list[str]) -> int:
    """Load ``/in/artifact`` with the real loaders and export plain data into ``/out``.

    ``argv`` may name another input path and output folder (positionally), for running outside the
    jail in tests; ``--mode X`` is ignored. Returns the process exit status: 0 on success, else the
    worker's codes (2 format, 3 limit, 4 crash), with ``error.json`` saying why. Never raises.
    """
    src, out_dir, max_output = _parse_args(argv)
    try:
        with _open(src) as fh:
            head = _read_head(fh)
        fmt = _detect(head, src)
    except _FormatError as exc:
        return write_error(out_dir, "format", str(exc))
    except OSError as exc:
        return write_error(out_dir, "crash", f"cannot read the artifact: {exc}")
    encoding = _encoding(argv)
    seen_globals = _stream_globals(src, encoding)
    locations: dict[int, str] = {}
    try:
        obj = _load(src, fmt, locations, encoding)
    except MemoryError:
        return write_error(out_dir, "limit", "the checkpoint ran out of memory while loading")
    except RecursionError:
        return write_error(out_dir, "limit", "the checkpoint is nested too deeply to load")
    except BaseException as exc:  # the checkpoint's own code may raise anything
        missing = _missing_module(exc)
        if missing is not None:
            why = f"loading the checkpoint raised {type(exc).__name__}: {exc}"
            return write_error(out_dir, "module", why[:2000], module=missing[:200])
        if isinstance(exc, UnicodeDecodeError):
            why = (f"the pickle holds a Python 2 string that is not valid {encoding} ({exc.reason} at byte "
                   f"{exc.start}): the file was written by Python 2")
            return write_error(out_dir, "encoding", why)
        why = f"loading the checkpoint raised {type(exc).__name__}: {exc}"
        return write_error(out_dir, "crash", why[:2000])
    try:
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_DEPTH + 200))
        exporter = _Exporter(locations)
        root = exporter.node(obj)
        if exporter.payloads:
            _write_safetensors(os.path.join(out_dir, "tensors.safetensors"), exporter.payloads, max_output)
        manifest = {
            "version": 1,
            "format": fmt,
            "storages": exporter.storages,
            "root": root,
            "globals": seen_globals if seen_globals is not None else [
                {"module": m, "name": n, "verdict": "stub", "count": c}
                for (m, n), c in sorted(exporter.globals.items())
            ],
            "byteorder": sys.byteorder,
        }
        _write_json_atomically(os.path.join(out_dir, "manifest.json"), manifest)
    except (_LimitError, MemoryError, RecursionError) as exc:
        return write_error(out_dir, "limit", f"exporting the checkpoint exceeded a budget: {exc}")
    except BaseException as exc:  # a tampered process may fail anywhere
        why = f"exporting the checkpoint failed: {type(exc).__name__}: {exc}"
        return write_error(out_dir, "crash", why[:2000])
    return 0


def _read_head(fh: BinaryIO) -> bytes:
    return fh.read(512)


if __name__ == "__main__":  # pragma: no cover - the jail enters through worker.__main__
    sys.exit(main(sys.argv[1:]))
