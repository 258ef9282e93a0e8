"""An inert unpickler: reads every opcode of pickle protocols 0-5 and never calls a global.

The opcode loop is written out here instead of subclassing ``pickle.Unpickler`` so that REDUCE, BUILD,
NEWOBJ, INST and OBJ are fully under control: an allowlisted global (torch's tensor rebuild functions,
OrderedDict, numpy's array reconstruction, ...) turns into a plain data description; every other global
turns into a :class:`Stub` that records what the pickle asked for. Nothing is imported, nothing is called.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import mmap
import struct

from ._common import (
    DTYPE_SIZES,
    MAX_NAME,
    Budgets,
    EncodingError,
    FormatError,
    LimitError,
    is_attribute,
    is_location,
    is_np_dtype,
)

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "Global",
    "NDArray",
    "Namespace",
    "NpDtype",
    "NpScalar",
    "ODict",
    "Parameter",
    "StorageRef",
    "Stub",
    "Tensor",
    "TorchDevice",
    "TorchDtype",
    "TorchSize",
    "Unpickled",
    "unpickle",
]


class Global:
    """A global the pickle referenced, as a value (never imported)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name


class Stub:
    """Stands in for an object the pickle wanted built by calling a global that is not allowlisted."""

    __slots__ = ("args", "called", "dictitems", "kwargs", "listitems", "module", "name", "state")

    def __init__(self, module: str, name: str, args: tuple[Any, ...] | None, called: bool) -> None:
        self.module = module
        self.name = name
        self.args = args
        self.kwargs: dict[Any, Any] | None = None
        self.state: Any = None
        self.listitems: list[Any] = []
        self.dictitems: list[tuple[Any, Any]] = []
        self.called = called


class StorageRef:
    """A storage handed out by the format's persistent-id resolver (an index into its storage table)."""

    __slots__ = ("dtype", "index")

    def __init__(self, index: int, dtype: str) -> None:
        self.index = index
        self.dtype = dtype


class Tensor:
    __slots__ = ("dtype", "offset", "requires_grad", "shape", "storage", "stride")

    def __init__(
        self, storage: StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], dtype: str,
        requires_grad: bool,
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.shape = shape
        self.stride = stride
        self.dtype = dtype
        self.requires_grad = requires_grad


class Parameter:
    __slots__ = ("data", "requires_grad")

    def __init__(self, data: Tensor, requires_grad: bool) -> None:
        self.data = data
        self.requires_grad = requires_grad


class TorchDtype:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class TorchSize:
    __slots__ = ("items",)

    def __init__(self, items: tuple[int, ...]) -> None:
        self.items = items


class TorchDevice:
    __slots__ = ("v",)

    def __init__(self, v: str) -> None:
        self.v = v


class Namespace:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}


class ODict(dict["Any", "Any"]):
    """``collections.OrderedDict`` as data; ``attrs`` holds instance attributes (e.g. ``_metadata``)."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, Any] = {}

    __hash__ = object.__hash__  # type: ignore[assignment]


class NpDtype:
    """A numpy dtype; ``typestr`` such as ``<f4`` once BUILD supplied the byte order, ``None`` if exotic."""

    __slots__ = ("kind", "typestr")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.typestr: str | None = _np_default_typestr(kind)


class NDArray:
    """A numeric numpy array whose bytes the format writer stores (``data``) or references (``source``)."""

    __slots__ = ("data", "dtype", "objects", "order", "shape", "storage")

    def __init__(self) -> None:
        self.dtype: str | None = None
        self.objects: list[Any] | None = None
        self.shape: tuple[int, ...] = ()
        self.order = "C"
        self.data: bytes | None = None
        self.storage: StorageRef | None = None


class NpScalar:
    __slots__ = ("data", "dtype")

    def __init__(self, dtype: str, data: bytes) -> None:
        self.dtype = dtype
        self.data = data


def _np_default_typestr(kind: str) -> str | None:
    if len(kind) < 2 or not kind[1:].isdigit():
        return None
    typestr = ("|" if kind[1:] == "1" else "<") + kind
    return typestr if is_np_dtype(typestr) else None


_TORCH_DTYPES = {name: name for name in DTYPE_SIZES}
_TORCH_DTYPES.update({"float": "float32", "double": "float64", "half": "float16", "long": "int64",
                      "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
                      "chalf": "complex32"})
_STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "LongStorage": "int64",
    "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "UntypedStorage": "uint8",
}
_NP_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NP_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")

# Globals that become data, never stubs. Everything else the pickle names is reported as a stub.
DATA_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("torch._utils", n) for n in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                                    "_rebuild_parameter", "_rebuild_parameter_with_state")}
    | {("torch._tensor", "_rebuild_from_type_v2"), ("torch", "Tensor"), ("torch._tensor", "Tensor"),
       ("torch.nn.parameter", "Parameter"), ("torch", "Size"), ("torch", "device"),
       ("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage")}
    | {("torch", n) for n in _STORAGE_TYPES}
    | {("torch", n) for n in _TORCH_DTYPES}
    | {("collections", "OrderedDict"), ("argparse", "Namespace"), ("_codecs", "encode"),
       ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("builtins", "object"),
       ("joblib.numpy_pickle", "NumpyArrayWrapper"), ("torch.storage", "_load_from_bytes")}
    | {("builtins", n) for n in ("set", "frozenset", "complex", "bytearray", "slice", "bytes", "list",
                                 "dict", "tuple")}
    # Plain value types, which configs pickle as type markers (omegaconf's key_type/element_type):
    # referenced, they stay names; called, only int()/int(an int) and the like become data.
    | {("builtins", n) for n in ("int", "float", "str", "bool")}
    | {(m, n) for m in _NP_MODULES for n in ("_reconstruct", "scalar")}
    | {(m, "_frombuffer") for m in _NP_NUMERIC}
    | {("numpy", "ndarray"), ("numpy", "dtype")}
)


# builtins value types and what calling each with no argument returns.
_VALUE_TYPES: dict[str, Any] = {"int": 0, "float": 0.0, "str": "", "bool": False}

# What an OrderedDict already has as attributes (dir(collections.OrderedDict)), which state may not shadow.
_ODICT_ATTRS = frozenset({
    "clear", "copy", "fromkeys", "get", "items", "keys", "move_to_end", "pop", "popitem", "setdefault",
    "update", "values",
})


class Unpickled:
    """The result of one inert unpickling: the root object and every global it referenced."""

    def __init__(self, root: Any, globals_seen: dict[tuple[str, str], int]) -> None:
        self.root = root
        self.globals_seen = globals_seen


class _NotData(Exception):
    """An allowlisted global got arguments that are not the plain data it expects: stub it instead."""


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise _NotData from None


def _int(v: Any) -> int:
    if type(v) is not int:
        raise _NotData
    return v


def _ints(v: Any) -> tuple[int, ...]:
    if isinstance(v, TorchSize):
        return v.items
    if type(v) is not tuple or any(type(x) is not int or x < 0 for x in v):
        raise _NotData
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _NotData
    return v


def _empty_hooks(v: Any) -> None:
    if not (v is None or (isinstance(v, (dict, ODict)) and not v)):
        raise _NotData


def _tensor(args: tuple[Any, ...], version: int) -> Tensor:
    if version == 1:
        if len(args) != 4:
            raise _NotData
        storage, offset, size, stride = args
        requires_grad = False
    else:
        n = 6 if version == 2 else 7
        if len(args) not in (n, n + 1):
            raise _NotData
        storage, offset, size, stride, requires_grad = args[:5]
        _empty_hooks(args[5])
        _bool(requires_grad)
    if not isinstance(storage, StorageRef):
        raise _NotData
    dtype = storage.dtype
    if version == 3:
        if not isinstance(args[6], TorchDtype):
            raise _NotData
        dtype = args[6].name
    shape, strides = _ints(size), _ints(stride)
    if len(shape) != len(strides) or _int(offset) < 0:
        raise _NotData
    return Tensor(storage, offset, shape, strides, dtype, requires_grad)


def _parameter(args: tuple[Any, ...]) -> Parameter:
    if len(args) not in (3, 4) or not isinstance(args[0], Tensor):
        raise _NotData
    _empty_hooks(args[2])
    if len(args) == 4 and args[3] not in (None, {}, ()):
        # Extra Python attributes on a Parameter: keep them visible as a stub rather than drop them.
        raise _NotData
    return Parameter(args[0], _bool(args[1]))


class _Machine:
    def __init__(
        self, data: bytes | mmap.mmap, persistent_load: Callable[[Any], Any] | None, budgets: Budgets,
        encoding: str,
    ) -> None:
        self.data = data
        self.size = len(data)
        self.pos = 0
        self.persistent_load = persistent_load
        self.budgets = budgets
        self.encoding = encoding
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.proto = 0
        self.globals_seen: dict[tuple[str, str], int] = {}
        self.build_hook: Callable[[_Machine, Stub], Any] | None = None
        # torch.storage._load_from_bytes(b): b is a whole torch.save file, read by the format layer
        # (which passes no hook down, so nesting stops after one level). ``bytes_at`` remembers where
        # each long BINBYTES payload sits in ``data``, so the nested file's raw storages can be
        # referenced in place.
        self.nested: Callable[[bytes, int | None], Any] | None = None
        self.bytes_at: dict[int, tuple[bytes, int]] = {}

    # -- reading ---------------------------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > self.size:
            raise FormatError("pickle data was truncated")
        out = self.data[self.pos : end]  # bytes for both bytes and mmap inputs
        self.pos = end
        return out

    def readline(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise FormatError("pickle data was truncated (missing newline)")
        out = bytes(self.data[self.pos : end])
        self.pos = end + 1
        return out

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise FormatError("pickle stream has no MARK where one is required")
        k = self.marks.pop()
        items = self.stack[k:]
        del self.stack[k:]
        return items

    def pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise FormatError("pickle stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise FormatError("pickle stack underflow")
        return self.stack[-1]

    def memo_put(self, key: int, value: Any) -> None:
        if key not in self.memo and len(self.memo) >= self.budgets.max_memo:
            raise LimitError(f"pickle memo exceeds {self.budgets.max_memo} entries")
        self.memo[key] = value

    def memo_get(self, key: int) -> Any:
        try:
            return self.memo[key]
        except KeyError:
            raise FormatError(f"pickle memo key {key} was never stored") from None

    def decode_str(self, raw: bytes) -> str:
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise EncodingError(
                f"the pickle holds a Python 2 string that is not valid {self.encoding} ({exc.reason} at byte "
                f"{exc.start}): the file was written by Python 2"
            ) from None

    def long(self, raw: bytes) -> int:
        if len(raw) > self.budgets.max_int_bytes:
            raise LimitError(f"pickle integer longer than {self.budgets.max_int_bytes} bytes")
        return int.from_bytes(raw, "little", signed=True)

    # -- globals and calls -----------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if len(module) > MAX_NAME or len(name) > MAX_NAME:
            raise FormatError("pickle names a global longer than any real module or name")
        key = (module, name)
        self.globals_seen[key] = self.globals_seen.get(key, 0) + 1
        if module == "torch" and name in _TORCH_DTYPES:
            return TorchDtype(_TORCH_DTYPES[name])
        return Global(module, name)

    def call(self, func: Any, args: Any) -> Any:
        if type(args) is not tuple:
            raise FormatError("pickle REDUCE arguments are not a tuple")
        if not isinstance(func, Global):
            # Calling something that is not a global (e.g. a stub returned by getattr): record it.
            stub = Stub("", "<call>", (func, *args), True)
            return stub
        key = (func.module, func.name)
        if key in DATA_GLOBALS:
            try:
                return self.call_data(key, args)
            except _NotData:
                pass
        return Stub(func.module, func.name, args, True)

    def call_data(self, key: tuple[str, str], args: tuple[Any, ...]) -> Any:
        module, name = key
        if module == "torch._utils":
            if name == "_rebuild_tensor":
                return _tensor(args, 1)
            if name == "_rebuild_tensor_v2":
                return _tensor(args, 2)
            if name == "_rebuild_tensor_v3":
                return _tensor(args, 3)
            return _parameter(args)
        if key == ("torch._tensor", "_rebuild_from_type_v2"):
            if len(args) != 4 or not isinstance(args[0], Global) or not isinstance(args[1], Global):
                raise _NotData
            inner = self.call(args[0], args[2])
            if args[3] not in (None, {}, ()) or not isinstance(inner, (Tensor, Parameter)):
                raise _NotData
            new_type = (args[1].module, args[1].name)
            if new_type in (("torch", "Tensor"), ("torch._tensor", "Tensor")):
                return inner
            if new_type == ("torch.nn.parameter", "Parameter"):
                if isinstance(inner, Parameter):
                    return inner
                return Parameter(inner, inner.requires_grad)
            raise _NotData
        if key == ("torch.storage", "_load_from_bytes"):
            if self.nested is None or len(args) != 1 or type(args[0]) is not bytes:
                raise _NotData
            raw = args[0]
            seen = self.bytes_at.get(id(raw))
            return self.nested(raw, seen[1] if seen is not None and seen[0] is raw else None)
        if key == ("torch", "Size"):
            if len(args) != 1:
                raise _NotData
            return TorchSize(_ints(args[0]))
        if key == ("torch", "device"):
            if len(args) == 1 and type(args[0]) is str:
                device = args[0]
            elif len(args) == 2 and type(args[0]) is str and type(args[1]) is int:
                device = f"{args[0]}:{args[1]}"
            else:
                raise _NotData
            if not is_location(device):
                raise _NotData
            return TorchDevice(device)
        if key == ("collections", "OrderedDict"):
            od = ODict()
            if len(args) == 1 and isinstance(args[0], (list, tuple)):
                for pair in args[0]:
                    if type(pair) not in (list, tuple) or len(pair) != 2:
                        raise _NotData
                    od[self.hashable(pair[0])] = pair[1]
            elif args:
                raise _NotData
            return od
        if key == ("argparse", "Namespace"):
            if args:
                raise _NotData
            return Namespace()
        if key == ("_codecs", "encode"):
            if len(args) == 2 and type(args[0]) is str and args[1] in ("latin1", "latin-1"):
                return args[0].encode("latin-1")
            raise _NotData
        if key == ("copyreg", "_reconstructor"):
            if len(args) != 3 or not isinstance(args[0], Global) or args[2] is not None:
                raise _NotData
            return self.newobj(args[0], ())
        if key == ("copyreg", "__newobj__"):
            if not args:
                raise _NotData
            return self.newobj(args[0], args[1:])
        if module == "builtins":
            return self.builtin(name, args)
        if name == "_reconstruct":
            if len(args) != 3 or not isinstance(args[0], Global) or (args[0].module, args[0].name) != (
                "numpy", "ndarray"
            ):
                raise _NotData
            return NDArray()
        if name == "scalar":
            if len(args) != 2 or not isinstance(args[0], NpDtype) or args[0].typestr is None:
                raise _NotData
            if type(args[1]) is not bytes:
                raise _NotData
            return NpScalar(args[0].typestr, args[1])
        if name == "_frombuffer":
            if len(args) != 4 or not isinstance(args[1], NpDtype) or args[1].typestr is None:
                raise _NotData
            if type(args[0]) not in (bytes, bytearray) or args[3] not in ("C", "F"):
                raise _NotData
            arr = NDArray()
            arr.dtype, arr.shape, arr.order = args[1].typestr, _ints(args[2]), args[3]
            arr.data = bytes(args[0])
            _check_array_size(arr.shape, arr.dtype, arr.data)
            return arr
        if key == ("numpy", "dtype"):
            if len(args) != 3 or type(args[0]) not in (str, bytes):
                raise _NotData
            # A Python 2 pickle read with encoding="bytes" names the dtype in bytes; numpy takes them.
            return NpDtype(args[0] if type(args[0]) is str else _ascii(args[0]))
        raise _NotData

    def hashable(self, key: Any) -> Any:
        try:
            hash(key)
        except TypeError:
            raise FormatError("pickle uses an unhashable dictionary key") from None
        return key

    def builtin(self, name: str, args: tuple[Any, ...]) -> Any:
        if name in ("set", "frozenset", "list", "tuple"):
            if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
                raise _NotData
            items = list(args[0]) if args else []
            if name in ("set", "frozenset"):
                for item in items:
                    self.hashable(item)
                return set(items) if name == "set" else frozenset(items)
            return items if name == "list" else tuple(items)
        if name == "dict":
            if args:
                raise _NotData
            return {}
        if name == "complex":
            if not 1 <= len(args) <= 2 or any(type(a) not in (int, float) for a in args):
                raise _NotData
            return complex(*args)
        if name in ("bytearray", "bytes"):
            if not args:
                return bytearray() if name == "bytearray" else b""
            if len(args) == 1 and type(args[0]) in (bytes, bytearray):
                return bytearray(args[0]) if name == "bytearray" else bytes(args[0])
            if len(args) == 2 and type(args[0]) is str and args[1] in ("latin1", "latin-1"):
                raw = args[0].encode("latin-1")
                return bytearray(raw) if name == "bytearray" else raw
            raise _NotData
        if name == "slice":
            if not 1 <= len(args) <= 3 or any(type(a) not in (int, type(None)) for a in args):
                raise _NotData
            return slice(*args)
        if name in _VALUE_TYPES:
            if not args:
                return _VALUE_TYPES[name]
            if len(args) == 1 and type(args[0]) is type(_VALUE_TYPES[name]):
                return args[0]
        raise _NotData

    def newobj(self, cls: Any, args: tuple[Any, ...]) -> Any:
        if isinstance(cls, Global):
            key = (cls.module, cls.name)
            if key == ("collections", "OrderedDict") and not args:
                return ODict()
            if key == ("argparse", "Namespace") and not args:
                return Namespace()
            if key == ("builtins", "set") and not args:
                return set()
            if key == ("builtins", "dict") and not args:
                return {}
            if key == ("builtins", "list") and not args:
                return []
            return Stub(cls.module, cls.name, args, True)
        return Stub("", "<new>", (cls, *args), True)

    def build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, Stub):
            if isinstance(obj.state, dict) and isinstance(state, dict):
                obj.state.update(state)
            else:
                obj.state = state
            return
        slot_state: Any = None
        if type(state) is tuple and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state, slot_state = state
        if isinstance(obj, Namespace):
            if not isinstance(state, dict) or slot_state:
                raise FormatError("argparse.Namespace state is not a dictionary")
            for k, v in state.items():
                if type(k) is not str or not is_attribute(k) or k in ("_get_args", "_get_kwargs"):
                    raise FormatError("argparse.Namespace attribute name is not an identifier")
                obj.items[k] = v
            return
        if isinstance(obj, ODict):
            if state is not None and not isinstance(state, dict):
                raise FormatError("OrderedDict state is not a dictionary")
            for k, v in (state or {}).items():
                if type(k) is not str or not is_attribute(k) or k in _ODICT_ATTRS:
                    raise FormatError("OrderedDict attribute name would shadow a method")
                obj.attrs[k] = v
            return
        if isinstance(obj, NpDtype):
            self.build_np_dtype(obj, state)
            return
        if isinstance(obj, NDArray) and obj.dtype is None:
            self.build_ndarray(obj, state)
            return
        raise FormatError(f"pickle BUILD on a {type(obj).__name__} value is not supported")

    def build_np_dtype(self, obj: NpDtype, state: Any) -> None:
        if type(state) is not tuple or len(state) < 8:
            obj.typestr = None
            return
        order = state[1]
        if type(order) is bytes:  # a Python 2 pickle read with encoding="bytes"
            order = order.decode("latin-1")
        if state[2] is not None or state[3] is not None or obj.kind[:1] in ("O", "V", "M", "m", "U", "S"):
            obj.typestr = None  # structured, object, string and datetime dtypes are not plain numbers
            return
        if obj.typestr is not None and order in ("<", ">", "|", "="):
            byteorder = "<" if order == "=" else order
            obj.typestr = ("|" if obj.typestr[0] == "|" else byteorder) + obj.kind

    def build_ndarray(self, obj: NDArray, state: Any) -> None:
        if type(state) is not tuple or len(state) != 5:
            raise FormatError("numpy array state is malformed")
        _, shape, dtype, fortran, raw = state
        try:
            shape = _ints(shape)
        except _NotData:
            raise FormatError("numpy array shape is malformed") from None
        if not isinstance(dtype, NpDtype) or type(fortran) is not bool:
            raise FormatError("numpy array dtype is malformed")
        obj.shape, obj.order = shape, "F" if fortran else "C"
        if dtype.kind == "O8" or dtype.kind == "O4":
            if not isinstance(raw, list):
                raise FormatError("numpy object array data is not a list")
            # An object array: its elements went through this unpickler like any other value.
            obj.dtype = "|O"
            obj.objects = raw
            return
        if dtype.typestr is None:
            raise _StubArray
        if type(raw) is str:
            # A Python 2 array's bytes read with encoding="latin1": numpy's __setstate__ encodes them back.
            try:
                raw = raw.encode("latin-1")
            except UnicodeEncodeError:
                raise FormatError("numpy array data is a string that is not latin-1") from None
        if type(raw) not in (bytes, bytearray):
            raise FormatError("numpy array data is not bytes")
        typestr, data = dtype.typestr, bytes(raw)
        if typestr[0] == ">":
            # numpy's __setstate__ stores big-endian pickled arrays in native (little-endian) order.
            unit = int(typestr[2:]) // (2 if typestr[1] == "c" else 1)
            import array  # only big-endian arrays need it (it pulls in collections at start-up)

            swapped = array.array({2: "H", 4: "I", 8: "Q"}[unit])
            if len(data) % unit:
                raise FormatError("numpy array data is not a whole number of elements")
            swapped.frombytes(data)
            swapped.byteswap()
            typestr, data = "<" + typestr[1:], swapped.tobytes()
        _check_array_size(shape, typestr, data)
        obj.dtype, obj.data = typestr, data

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> Any:
        stack = self.stack
        marks = self.marks
        memo = self.memo
        data = self.data
        size = len(data)
        ops = 0
        max_ops = self.budgets.max_ops
        max_nodes = self.budgets.max_nodes
        max_memo = self.budgets.max_memo
        dispatch = _DISPATCH
        unpack_u4 = _U4.unpack_from
        pos = self.pos
        # The opcodes a state dict is mostly made of (``_INLINE``) are handled here and nowhere else (a
        # third of the run time went to calling handlers); the rest go to their one handler in
        # ``_DISPATCH``. ``pos`` is local here and handed to and back from the handlers through ``self.pos``.
        while True:
            if pos >= size:
                raise FormatError("pickle data ended without STOP")
            op = data[pos]
            pos += 1
            ops += 1
            if ops > max_ops:
                raise LimitError(f"pickle has more than {max_ops} opcodes")
            if not ops & 1023 and len(stack) > max_nodes:
                raise LimitError(f"pickle stack exceeds {max_nodes} entries")
            if op == 0x72 or op == 0x71:  # LONG_BINPUT, BINPUT
                n = 4 if op == 0x72 else 1
                if pos + n > size:
                    raise FormatError("pickle data was truncated")
                key = unpack_u4(data, pos)[0] if n == 4 else data[pos]
                pos += n
                if not stack or (marks and len(stack) <= marks[-1]):
                    raise FormatError("pickle stack underflow")
                if key not in memo and len(memo) >= max_memo:
                    raise LimitError(f"pickle memo exceeds {max_memo} entries")
                memo[key] = stack[-1]
                continue
            if op == 0x4B:  # BININT1
                if pos >= size:
                    raise FormatError("pickle data was truncated")
                stack.append(data[pos])
                pos += 1
                continue
            if op == 0x68:  # BINGET
                if pos >= size:
                    raise FormatError("pickle data was truncated")
                key = data[pos]
                pos += 1
                try:
                    stack.append(memo[key])
                except KeyError:
                    raise FormatError(f"pickle memo key {key} was never stored") from None
                continue
            if op == 0x28:  # MARK
                marks.append(len(stack))
                continue
            if op == 0x86 or op == 0x52:  # TUPLE2, REDUCE
                if len(stack) < 2 or (marks and len(stack) - 2 < marks[-1]):
                    raise FormatError("pickle stack underflow")
                b = stack.pop()
                a = stack.pop()
                if op == 0x86:
                    stack.append((a, b))
                else:
                    self.pos = pos
                    stack.append(self.call(a, b))
                    pos = self.pos
                continue
            if op == 0x89:  # NEWFALSE
                stack.append(False)
                continue
            if op == 0x29:  # EMPTY_TUPLE
                stack.append(())
                continue
            if op == 0x2E:  # STOP
                self.pos = pos
                value = self.pop()
                return value
            handler = dispatch.get(op)
            if handler is None:
                raise FormatError(f"pickle opcode 0x{op:02x} at offset {pos - 1} is not valid")
            self.pos = pos
            handler(self)
            pos = self.pos


def _check_array_size(shape: tuple[int, ...], typestr: str, data: bytes) -> None:
    n = int(typestr[2:])
    for s in shape:
        n *= s
    if n != len(data):
        raise FormatError("numpy array data does not match its shape and dtype")


class _StubArray(Exception):
    pass


def _u(fmt: str) -> Callable[[_Machine], int]:
    s = struct.Struct(fmt)

    size = s.size

    def read(m: _Machine) -> int:
        pos = m.pos
        if pos + size > m.size:
            raise FormatError("pickle data was truncated")
        value: int = s.unpack_from(m.data, pos)[0]
        m.pos = pos + size
        return value

    return read


_u1, _u2, _u4, _u8, _i4 = _u("<B"), _u("<H"), _u("<I"), _u("<Q"), _u("<i")
_U4 = struct.Struct("<I")


def _op_pop(m: _Machine) -> None:
    if m.marks and len(m.stack) == m.marks[-1]:
        m.pop_mark()  # CPython pops a MARK when the stack above it is empty
    else:
        m.pop()


def _op_pop_mark(m: _Machine) -> None:
    m.pop_mark()


def _op_dup(m: _Machine) -> None:
    m.stack.append(m.top())


def _op_float(m: _Machine) -> None:
    try:
        m.stack.append(float(m.readline()))
    except ValueError:
        raise FormatError("pickle FLOAT is malformed") from None


def _op_int(m: _Machine) -> None:
    line = m.readline()
    if line == b"00":
        m.stack.append(False)
    elif line == b"01":
        m.stack.append(True)
    else:
        m.stack.append(_parse_int(line, m))


def _parse_int(line: bytes, m: _Machine) -> int:
    if len(line) > 2 * m.budgets.max_int_bytes:
        raise LimitError("pickle integer is too long")
    try:
        return int(line, 0) if line[:2] in (b"0x", b"0o") else int(line)
    except ValueError:
        raise FormatError("pickle INT is malformed") from None


def _op_long(m: _Machine) -> None:
    line = m.readline()
    if line.endswith(b"L"):
        line = line[:-1]
    m.stack.append(_parse_int(line, m))


def _op_binint(m: _Machine) -> None:
    m.stack.append(_i4(m))


def _op_binint2(m: _Machine) -> None:
    m.stack.append(_u2(m))


def _op_none(m: _Machine) -> None:
    m.stack.append(None)


def _persistent(m: _Machine, pid: Any) -> None:
    if m.persistent_load is None:
        raise FormatError("pickle uses persistent ids, which this format does not define")
    m.stack.append(m.persistent_load(pid))


def _op_persid(m: _Machine) -> None:
    try:
        pid = m.readline().decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("pickle PERSID is not ASCII") from None
    _persistent(m, pid)


def _op_binpersid(m: _Machine) -> None:
    _persistent(m, m.pop())


def _string_literal(m: _Machine, raw: bytes) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b"'", b'"'):
        raw = raw[1:-1]
    else:
        raise FormatError("pickle STRING is not quoted")
    try:
        value = codecs.escape_decode(raw)[0]
    except ValueError:
        raise FormatError("pickle STRING has a bad escape") from None
    return _py2_str(m, value)


def _py2_str(m: _Machine, value: bytes) -> Any:
    if m.encoding == "bytes":
        return value
    return m.decode_str(value)


def _op_string(m: _Machine) -> None:
    m.stack.append(_string_literal(m, m.readline()))


def _op_binstring(m: _Machine) -> None:
    n = _i4(m)
    m.stack.append(_py2_str(m, m.read(n)))


def _op_short_binstring(m: _Machine) -> None:
    m.stack.append(_py2_str(m, m.read(_u1(m))))


def _op_unicode(m: _Machine) -> None:
    try:
        m.stack.append(m.readline().decode("raw-unicode-escape"))
    except UnicodeDecodeError:
        raise FormatError("pickle UNICODE is malformed") from None


def _utf8(m: _Machine, n: int) -> None:
    try:
        m.stack.append(m.read(n).decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        raise FormatError("pickle string is not UTF-8") from None


def _op_binunicode(m: _Machine) -> None:
    _utf8(m, _u4(m))


def _op_short_binunicode(m: _Machine) -> None:
    _utf8(m, _u1(m))


def _op_binunicode8(m: _Machine) -> None:
    _utf8(m, _u8(m))


def _long_bytes(m: _Machine, n: int) -> None:
    at = m.pos
    raw = m.read(n)
    if m.nested is not None and n >= _NESTED_MIN:
        m.bytes_at[id(raw)] = (raw, at)
    m.stack.append(raw)


# Shorter byte strings cannot hold a torch.save file with a storage in it; not worth remembering.
_NESTED_MIN = 256


def _op_binbytes(m: _Machine) -> None:
    _long_bytes(m, _u4(m))


def _op_short_binbytes(m: _Machine) -> None:
    m.stack.append(m.read(_u1(m)))


def _op_binbytes8(m: _Machine) -> None:
    _long_bytes(m, _u8(m))


def _op_bytearray8(m: _Machine) -> None:
    m.stack.append(bytearray(m.read(_u8(m))))


def _op_next_buffer(m: _Machine) -> None:
    raise FormatError("pickle refers to out-of-band buffers, which a file cannot carry")


def _op_readonly_buffer(m: _Machine) -> None:
    m.top()


def _op_append(m: _Machine) -> None:
    value = m.pop()
    _extend(m, m.top(), [value])


def _op_appends(m: _Machine) -> None:
    items = m.pop_mark()
    _extend(m, m.top(), items)


def _extend(m: _Machine, target: Any, items: list[Any]) -> None:
    if type(target) is list:
        target.extend(items)
    elif isinstance(target, Stub):
        target.listitems.extend(items)
    else:
        raise FormatError(f"pickle APPEND on a {type(target).__name__} value")


def _op_build(m: _Machine) -> None:
    state = m.pop()
    obj = m.top()
    try:
        m.build(obj, state)
    except _StubArray:
        # An array of a dtype that is not plain numbers (structured, datetime, strings): stub it.
        stub = Stub("numpy", "ndarray", None, True)
        stub.state = state
        m.stack[-1] = stub
        for key, value in list(m.memo.items()):
            if value is obj:
                m.memo[key] = stub
        return
    if m.build_hook is not None and isinstance(obj, Stub):
        # joblib writes an array's raw bytes right after its wrapper's BUILD; the hook consumes them.
        replacement = m.build_hook(m, obj)
        if replacement is not None:
            m.stack[-1] = replacement


def _op_global(m: _Machine) -> None:
    try:
        module = m.readline().decode("utf-8")
        name = m.readline().decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("pickle GLOBAL is not UTF-8") from None
    m.stack.append(m.find_class(module, name))


def _op_stack_global(m: _Machine) -> None:
    name = m.pop()
    module = m.pop()
    if type(name) is not str or type(module) is not str:
        raise FormatError("pickle STACK_GLOBAL needs two strings")
    m.stack.append(m.find_class(module, name))


def _op_dict(m: _Machine) -> None:
    items = m.pop_mark()
    if len(items) % 2:
        raise FormatError("pickle DICT has an odd number of items")
    d: dict[Any, Any] = {}
    for i in range(0, len(items), 2):
        d[m.hashable(items[i])] = items[i + 1]
    m.stack.append(d)


def _op_empty_dict(m: _Machine) -> None:
    m.stack.append({})


def _op_setitem(m: _Machine) -> None:
    value = m.pop()
    key = m.pop()
    _setitems(m, m.top(), [key, value])


def _op_setitems(m: _Machine) -> None:
    items = m.pop_mark()
    if len(items) % 2:
        raise FormatError("pickle SETITEMS has an odd number of items")
    _setitems(m, m.top(), items)


def _setitems(m: _Machine, target: Any, items: list[Any]) -> None:
    if isinstance(target, dict):
        for i in range(0, len(items), 2):
            target[m.hashable(items[i])] = items[i + 1]
    elif isinstance(target, Stub):
        target.dictitems.extend((items[i], items[i + 1]) for i in range(0, len(items), 2))
    else:
        raise FormatError(f"pickle SETITEM on a {type(target).__name__} value")


def _op_get(m: _Machine) -> None:
    m.stack.append(m.memo_get(_parse_int(m.readline(), m)))


def _op_long_binget(m: _Machine) -> None:
    m.stack.append(m.memo_get(_u4(m)))


def _op_put(m: _Machine) -> None:
    key = _parse_int(m.readline(), m)
    if key < 0:
        raise FormatError("pickle PUT with a negative key")
    m.memo_put(key, m.top())


def _op_memoize(m: _Machine) -> None:
    m.memo_put(len(m.memo), m.top())


def _op_inst(m: _Machine) -> None:
    try:
        module = m.readline().decode("ascii")
        name = m.readline().decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("pickle INST is not ASCII") from None
    args = tuple(m.pop_mark())
    m.stack.append(m.call(m.find_class(module, name), args))


def _op_obj(m: _Machine) -> None:
    items = m.pop_mark()
    if not items:
        raise FormatError("pickle OBJ without a class")
    cls, args = items[0], tuple(items[1:])
    m.stack.append(m.call(cls, args) if args else m.newobj(cls, ()))


def _op_list(m: _Machine) -> None:
    m.stack.append(m.pop_mark())


def _op_empty_list(m: _Machine) -> None:
    m.stack.append([])


def _op_tuple(m: _Machine) -> None:
    m.stack.append(tuple(m.pop_mark()))


def _op_tuple1(m: _Machine) -> None:
    m.stack.append((m.pop(),))


def _op_tuple3(m: _Machine) -> None:
    c = m.pop()
    b = m.pop()
    a = m.pop()
    m.stack.append((a, b, c))


def _op_binfloat(m: _Machine) -> None:
    m.stack.append(struct.unpack(">d", m.read(8))[0])


def _op_proto(m: _Machine) -> None:
    proto = _u1(m)
    if proto > 5:
        raise FormatError(f"pickle protocol {proto} is not supported")
    m.proto = proto


def _op_newobj(m: _Machine) -> None:
    args = m.pop()
    cls = m.pop()
    if type(args) is not tuple:
        raise FormatError("pickle NEWOBJ arguments are not a tuple")
    m.stack.append(m.newobj(cls, args))


def _op_newobj_ex(m: _Machine) -> None:
    kwargs = m.pop()
    args = m.pop()
    cls = m.pop()
    if type(args) is not tuple or not isinstance(kwargs, dict):
        raise FormatError("pickle NEWOBJ_EX arguments are malformed")
    obj = m.newobj(cls, args)
    if kwargs:
        if not isinstance(obj, Stub):
            obj = Stub(cls.module, cls.name, args, True) if isinstance(cls, Global) else obj
        if isinstance(obj, Stub):
            obj.kwargs = kwargs
    m.stack.append(obj)


def _op_ext(m: _Machine) -> None:
    raise FormatError("pickle uses the copyreg extension registry (EXT1/2/4), which is empty in any loader")


def _op_newtrue(m: _Machine) -> None:
    m.stack.append(True)


def _op_long1(m: _Machine) -> None:
    m.stack.append(m.long(m.read(_u1(m))))


def _op_long4(m: _Machine) -> None:
    n = _i4(m)
    if n < 0:
        raise FormatError("pickle LONG4 with a negative length")
    if n > m.budgets.max_int_bytes:
        raise LimitError(f"pickle integer longer than {m.budgets.max_int_bytes} bytes")
    m.stack.append(m.long(m.read(n)))


def _op_empty_set(m: _Machine) -> None:
    m.stack.append(set())


def _op_additems(m: _Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if isinstance(target, set):
        for item in items:
            target.add(m.hashable(item))
    elif isinstance(target, Stub):
        target.listitems.extend(items)
    else:
        raise FormatError(f"pickle ADDITEMS on a {type(target).__name__} value")


def _op_frozenset(m: _Machine) -> None:
    items = m.pop_mark()
    m.stack.append(frozenset(m.hashable(i) for i in items))


def _op_frame(m: _Machine) -> None:
    n = _u8(m)
    if n > len(m.data) - m.pos:
        raise FormatError("pickle FRAME is longer than the data")


# The opcodes :meth:`_Machine.run` handles inline, the ones a state dict is mostly made of: MARK,
# EMPTY_TUPLE, BININT1, REDUCE, BINGET, BINPUT, LONG_BINPUT, TUPLE2, NEWFALSE (and STOP). Every other opcode
# has exactly one handler, in ``_DISPATCH``.
_INLINE = frozenset({0x28, 0x29, 0x4B, 0x52, 0x68, 0x71, 0x72, 0x86, 0x89})

_DISPATCH: dict[int, Callable[[_Machine], None]] = {
    ord("0"): _op_pop, ord("1"): _op_pop_mark, ord("2"): _op_dup, ord("F"): _op_float, ord("I"): _op_int,
    ord("J"): _op_binint, ord("L"): _op_long, ord("M"): _op_binint2, ord("N"): _op_none,
    ord("P"): _op_persid, ord("Q"): _op_binpersid, ord("S"): _op_string, ord("T"): _op_binstring,
    ord("U"): _op_short_binstring, ord("V"): _op_unicode, ord("X"): _op_binunicode, ord("a"): _op_append,
    ord("b"): _op_build, ord("c"): _op_global, ord("d"): _op_dict, ord("}"): _op_empty_dict,
    ord("e"): _op_appends, ord("g"): _op_get, ord("i"): _op_inst, ord("j"): _op_long_binget,
    ord("l"): _op_list, ord("]"): _op_empty_list, ord("o"): _op_obj, ord("p"): _op_put,
    ord("s"): _op_setitem, ord("t"): _op_tuple, ord("u"): _op_setitems, ord("G"): _op_binfloat,
    0x80: _op_proto, 0x81: _op_newobj, 0x82: _op_ext, 0x83: _op_ext, 0x84: _op_ext, 0x85: _op_tuple1,
    0x87: _op_tuple3, 0x88: _op_newtrue, 0x8A: _op_long1, 0x8B: _op_long4, ord("B"): _op_binbytes,
    ord("C"): _op_short_binbytes, 0x8C: _op_short_binunicode, 0x8D: _op_binunicode8, 0x8E: _op_binbytes8,
    0x8F: _op_empty_set, 0x90: _op_additems, 0x91: _op_frozenset, 0x92: _op_newobj_ex,
    0x93: _op_stack_global, 0x94: _op_memoize, 0x95: _op_frame, 0x96: _op_bytearray8,
    0x97: _op_next_buffer, 0x98: _op_readonly_buffer,
}


def unpickle(
    data: bytes | mmap.mmap,
    *,
    persistent_load: Callable[[Any], Any] | None = None,
    budgets: Budgets | None = None,
    encoding: str = "utf-8",
    start: int = 0,
    build_hook: Callable[[Any, Stub], Any] | None = None,
    nested: Callable[[bytes, int | None], Any] | None = None,
) -> tuple[Unpickled, int]:
    """Read one pickle from ``data[start:]`` without calling anything.

    Returns the result and the offset just past the STOP opcode (legacy torch files and joblib put more
    data after a pickle). ``build_hook(machine, stub)`` runs after each BUILD on a stub; a non-None
    result replaces the stub (joblib's array wrappers are followed by the array's bytes, which the hook
    reads by advancing ``machine.pos``). ``nested(raw, offset)`` reads the torch.save file ``raw`` a
    ``torch.storage._load_from_bytes`` call carries (``offset``: where ``raw`` sits in ``data``, or None
    when it does not appear there verbatim); without it such calls stay stubs.

    Raises:
        FormatError: the bytes are not a well-formed pickle.
        LimitError: a budget ran out.
    """
    m = _Machine(data, persistent_load, budgets or Budgets(), encoding)
    m.pos = start
    m.build_hook = build_hook
    m.nested = nested
    try:
        root = m.run()
    except RecursionError:
        raise LimitError("pickle nests too deeply") from None
    return Unpickled(root, m.globals_seen), m.pos
