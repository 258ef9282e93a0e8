"""The allowlist: the globals whose call becomes data, each with the builder that makes the data.

:data:`ALLOWLIST` maps a global's full ``(module, name)`` to ``builder(machine, args) -> value``. Its keys
are the allowlist (what the manifest's ``globals`` list calls ``data``, :mod:`._emit`); nothing else in the
unpickler decides what is data. A builder checks that its arguments are the plain data it expects and
raises :class:`NotData` otherwise; :func:`call` then records the call as a :class:`Stub`, as it does every
call of a global that is not a key here. Nothing is imported and nothing the pickle names is called.

Some keys are allowlisted only as names: a checkpoint references ``torch.FloatStorage``,
``numpy.ndarray``, ``builtins.object`` or joblib's array wrapper as a type marker or hands them to another
builder, so they are data, but calling one stays a stub (:func:`_stub`).

Also here: :func:`reference` (what GLOBAL pushes), :func:`newobj` (NEWOBJ, ``copyreg.__newobj__``) and
:func:`build` (the BUILD state the allowlisted values accept).
"""

from __future__ import annotations

from . import _numpy
from ._common import FormatError, is_attribute, is_location
from ._values import (
    Global,
    Namespace,
    NDArray,
    NotData,
    NpDtype,
    ODict,
    Parameter,
    StorageRef,
    Stub,
    Tensor,
    TorchDevice,
    TorchDtype,
    TorchSize,
    as_bool,
    as_int,
    as_ints,
    hashable,
)
from .protocol import DTYPE_SIZES

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._machine import Machine

    Builder = Callable[[Machine, tuple[Any, ...]], Any]

__all__ = ["ALLOWLIST", "TORCH_DTYPES", "build", "call", "newobj", "reference"]

# torch.<name> for each dtype: referencing one gives a TorchDtype (the name it stands for).
TORCH_DTYPES = {name: name for name in DTYPE_SIZES}
TORCH_DTYPES.update({"float": "float32", "double": "float64", "half": "float16", "long": "int64",
                     "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
                     "chalf": "complex32"})
_STORAGE_TYPES = (
    "DoubleStorage", "FloatStorage", "HalfStorage", "LongStorage", "IntStorage", "ShortStorage",
    "CharStorage", "ByteStorage", "BoolStorage", "BFloat16Storage", "ComplexDoubleStorage",
    "ComplexFloatStorage", "UntypedStorage",
)


def _stub(m: Machine, args: tuple[Any, ...]) -> Any:
    """Allowlisted as a name only: calling it stays a stub."""
    raise NotData


# -- torch ---------------------------------------------------------------------------------------------


def _empty_hooks(v: Any) -> None:
    if not (v is None or (isinstance(v, (dict, ODict)) and not v)):
        raise NotData


def _tensor(args: tuple[Any, ...], version: int) -> Tensor:
    if version == 1:
        if len(args) != 4:
            raise NotData
        storage, offset, size, stride = args
        requires_grad = False
    else:
        n = 6 if version == 2 else 7
        if len(args) not in (n, n + 1):
            raise NotData
        storage, offset, size, stride, requires_grad = args[:5]
        _empty_hooks(args[5])
        as_bool(requires_grad)
    if not isinstance(storage, StorageRef):
        raise NotData
    dtype = storage.dtype
    if version == 3:
        if not isinstance(args[6], TorchDtype):
            raise NotData
        dtype = args[6].name
    shape, strides = as_ints(size), as_ints(stride)
    if len(shape) != len(strides) or as_int(offset) < 0:
        raise NotData
    return Tensor(storage, offset, shape, strides, dtype, requires_grad)


def _rebuild_tensor(m: Machine, args: tuple[Any, ...]) -> Tensor:
    return _tensor(args, 1)


def _rebuild_tensor_v2(m: Machine, args: tuple[Any, ...]) -> Tensor:
    return _tensor(args, 2)


def _rebuild_tensor_v3(m: Machine, args: tuple[Any, ...]) -> Tensor:
    return _tensor(args, 3)


def _rebuild_parameter(m: Machine, args: tuple[Any, ...]) -> Parameter:
    if len(args) not in (3, 4) or not isinstance(args[0], Tensor):
        raise NotData
    _empty_hooks(args[2])
    if len(args) == 4 and args[3] not in (None, {}, ()):
        # Extra Python attributes on a Parameter: keep them visible as a stub rather than drop them.
        raise NotData
    return Parameter(args[0], as_bool(args[1]))


def _rebuild_from_type_v2(m: Machine, args: tuple[Any, ...]) -> Tensor | Parameter:
    if len(args) != 4 or not isinstance(args[0], Global) or not isinstance(args[1], Global):
        raise NotData
    inner = call(m, args[0], args[2])
    if args[3] not in (None, {}, ()) or not isinstance(inner, (Tensor, Parameter)):
        raise NotData
    new_type = (args[1].module, args[1].name)
    if new_type in (("torch", "Tensor"), ("torch._tensor", "Tensor")):
        return inner
    if new_type == ("torch.nn.parameter", "Parameter"):
        if isinstance(inner, Parameter):
            return inner
        return Parameter(inner, inner.requires_grad)
    raise NotData


def _load_from_bytes(m: Machine, args: tuple[Any, ...]) -> Any:
    """``torch.storage._load_from_bytes(b)``: ``b`` is a whole torch.save file, read by the format layer."""
    if m.nested is None or len(args) != 1 or type(args[0]) is not bytes:
        raise NotData
    raw = args[0]
    seen = m.bytes_at.get(id(raw))
    return m.nested(raw, seen[1] if seen is not None and seen[0] is raw else None)


def _size(m: Machine, args: tuple[Any, ...]) -> TorchSize:
    if len(args) != 1:
        raise NotData
    return TorchSize(as_ints(args[0]))


def _device(m: Machine, args: tuple[Any, ...]) -> TorchDevice:
    if len(args) == 1 and type(args[0]) is str:
        device = args[0]
    elif len(args) == 2 and type(args[0]) is str and type(args[1]) is int:
        device = f"{args[0]}:{args[1]}"
    else:
        raise NotData
    if not is_location(device):
        raise NotData
    return TorchDevice(device)


# -- the standard library --------------------------------------------------------------------------------


def _ordered_dict(m: Machine, args: tuple[Any, ...]) -> ODict:
    od = ODict()
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        for pair in args[0]:
            if type(pair) not in (list, tuple) or len(pair) != 2:
                raise NotData
            od[hashable(pair[0])] = pair[1]
    elif args:
        raise NotData
    return od


def _namespace(m: Machine, args: tuple[Any, ...]) -> Namespace:
    if args:
        raise NotData
    return Namespace()


def _codecs_encode(m: Machine, args: tuple[Any, ...]) -> bytes:
    if len(args) == 2 and type(args[0]) is str and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    raise NotData


def _reconstructor(m: Machine, args: tuple[Any, ...]) -> Any:
    if len(args) != 3 or not isinstance(args[0], Global) or args[2] is not None:
        raise NotData
    return newobj(m, args[0], ())


def _newobj(m: Machine, args: tuple[Any, ...]) -> Any:
    if not args:
        raise NotData
    return newobj(m, args[0], args[1:])


def _collection(kind: str) -> Builder:
    """``set``, ``frozenset``, ``list`` or ``tuple`` of nothing or of one list, tuple, set or frozenset."""

    def make(m: Machine, args: tuple[Any, ...]) -> Any:
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
            raise NotData
        items = list(args[0]) if args else []
        if kind in ("set", "frozenset"):
            for item in items:
                hashable(item)
            return set(items) if kind == "set" else frozenset(items)
        return items if kind == "list" else tuple(items)

    return make


def _dict(m: Machine, args: tuple[Any, ...]) -> dict[Any, Any]:
    if args:
        raise NotData
    return {}


def _complex(m: Machine, args: tuple[Any, ...]) -> complex:
    if not 1 <= len(args) <= 2 or any(type(a) not in (int, float) for a in args):
        raise NotData
    return complex(*args)


def _byte_string(kind: type[bytes] | type[bytearray]) -> Builder:
    """``bytes`` or ``bytearray`` of nothing, of bytes, or of a latin-1 str (how protocols 0-2 write them)."""

    def make(m: Machine, args: tuple[Any, ...]) -> bytes | bytearray:
        if not args:
            return kind()
        if len(args) == 1 and type(args[0]) in (bytes, bytearray):
            return kind(args[0])
        if len(args) == 2 and type(args[0]) is str and args[1] in ("latin1", "latin-1"):
            return kind(args[0].encode("latin-1"))
        raise NotData

    return make


def _slice(m: Machine, args: tuple[Any, ...]) -> slice:
    if not 1 <= len(args) <= 3 or any(type(a) not in (int, type(None)) for a in args):
        raise NotData
    return slice(*args)


def _value_type(default: Any) -> Builder:
    """Plain value types, which configs pickle as type markers (omegaconf's key_type/element_type):
    referenced, they stay names; called, only ``int()``/``int(an int)`` and the like become data."""

    def make(m: Machine, args: tuple[Any, ...]) -> Any:
        if not args:
            return default
        if len(args) == 1 and type(args[0]) is type(default):
            return args[0]
        raise NotData

    return make


# -- the table -----------------------------------------------------------------------------------------

ALLOWLIST: dict[tuple[str, str], Builder] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    ("torch", "Tensor"): _stub,
    ("torch._tensor", "Tensor"): _stub,
    ("torch.nn.parameter", "Parameter"): _stub,
    ("torch.storage", "UntypedStorage"): _stub,
    **{("torch", name): _stub for name in _STORAGE_TYPES},
    **{("torch", name): _stub for name in TORCH_DTYPES},  # referenced, each is a TorchDtype
    ("collections", "OrderedDict"): _ordered_dict,
    ("argparse", "Namespace"): _namespace,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("builtins", "set"): _collection("set"),
    ("builtins", "frozenset"): _collection("frozenset"),
    ("builtins", "list"): _collection("list"),
    ("builtins", "tuple"): _collection("tuple"),
    ("builtins", "dict"): _dict,
    ("builtins", "complex"): _complex,
    ("builtins", "bytes"): _byte_string(bytes),
    ("builtins", "bytearray"): _byte_string(bytearray),
    ("builtins", "slice"): _slice,
    ("builtins", "int"): _value_type(0),
    ("builtins", "float"): _value_type(0.0),
    ("builtins", "str"): _value_type(""),
    ("builtins", "bool"): _value_type(False),
    ("builtins", "object"): _stub,
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _stub,  # the format layer's build_hook reads its array
    **{(module, "_reconstruct"): _numpy.reconstruct for module in _numpy.MODULES},
    **{(module, "scalar"): _numpy.scalar for module in _numpy.MODULES},
    **{(module, "_frombuffer"): _numpy.frombuffer for module in _numpy.NUMERIC},
    ("numpy", "dtype"): _numpy.dtype,
    ("numpy", "ndarray"): _stub,
}

# NEWOBJ with no arguments (``cls.__new__(cls)``) of these allowlisted types is an empty value.
_NEW_EMPTY: dict[tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): ODict, ("argparse", "Namespace"): Namespace, ("builtins", "set"): set,
    ("builtins", "dict"): dict, ("builtins", "list"): list,
}


# -- what the opcodes ask of globals -----------------------------------------------------------------------


def reference(module: str, name: str) -> Global | TorchDtype:
    """What GLOBAL and STACK_GLOBAL push: the global as a name (a torch dtype as the dtype it names)."""
    if module == "torch" and name in TORCH_DTYPES:
        return TorchDtype(TORCH_DTYPES[name])
    return Global(module, name)


def call(m: Machine, func: Any, args: Any) -> Any:
    """REDUCE, INST and OBJ: the data an allowlisted global builds from ``args``, or a stub of the call."""
    if type(args) is not tuple:
        raise FormatError("pickle REDUCE arguments are not a tuple")
    if not isinstance(func, Global):
        # Calling something that is not a global (e.g. a stub returned by getattr): record it.
        return Stub("", "<call>", (func, *args), True)
    builder = ALLOWLIST.get((func.module, func.name))
    if builder is not None:
        try:
            return builder(m, args)
        except NotData:
            pass
    return Stub(func.module, func.name, args, True)


def newobj(m: Machine, cls: Any, args: tuple[Any, ...]) -> Any:
    """NEWOBJ: ``cls.__new__(cls, *args)``, data only for an empty value of a few allowlisted types."""
    if isinstance(cls, Global):
        empty = _NEW_EMPTY.get((cls.module, cls.name))
        if empty is not None and not args:
            return empty()
        return Stub(cls.module, cls.name, args, True)
    return Stub("", "<new>", (cls, *args), True)


# What an OrderedDict already has as attributes (dir(collections.OrderedDict)), which state may not shadow.
_ODICT_ATTRS = frozenset({
    "clear", "copy", "fromkeys", "get", "items", "keys", "move_to_end", "pop", "popitem", "setdefault",
    "update", "values",
})


def build(obj: Any, state: Any) -> None:
    """BUILD: ``obj.__setstate__(state)`` for the values that take state (raises ``_numpy.StubArray``)."""
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
        _numpy.build_np_dtype(obj, state)
        return
    if isinstance(obj, NDArray) and obj.dtype is None:
        _numpy.build_ndarray(obj, state)
        return
    raise FormatError(f"pickle BUILD on a {type(obj).__name__} value is not supported")
