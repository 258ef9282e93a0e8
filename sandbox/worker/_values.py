"""The values the inert unpickler builds instead of objects, and the checks the allowlist's builders share.

Each class is plain data (slots, no behaviour): :class:`Global` is a global the pickle named, :class:`Stub`
what calling a global that is not allowlisted would have built, the rest are what allowlisted globals
become (torch tensors and their parts, numpy arrays, ``OrderedDict``, ``argparse.Namespace``).
:mod:`._emit` turns them into the manifest. Nothing here imports or calls anything the pickle names.
"""

from __future__ import annotations

from ._common import FormatError, is_np_dtype

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "Global",
    "NDArray",
    "Namespace",
    "NotData",
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
    "as_bool",
    "as_int",
    "as_ints",
    "hashable",
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


class Unpickled:
    """The result of one inert unpickling: the root object and every global it referenced."""

    def __init__(self, root: Any, globals_seen: dict[tuple[str, str], int]) -> None:
        self.root = root
        self.globals_seen = globals_seen


# -- checks on a builder's arguments ---------------------------------------------------------------------


class NotData(Exception):
    """An allowlisted global got arguments that are not the plain data it expects: stub it instead."""


def as_int(v: Any) -> int:
    if type(v) is not int:
        raise NotData
    return v


def as_ints(v: Any) -> tuple[int, ...]:
    if isinstance(v, TorchSize):
        return v.items
    if type(v) is not tuple or any(type(x) is not int or x < 0 for x in v):
        raise NotData
    return v


def as_bool(v: Any) -> bool:
    if type(v) is not bool:
        raise NotData
    return v


def hashable(key: Any) -> Any:
    """``key``, if it can be a dictionary key or set member (the pickle is refused otherwise)."""
    try:
        hash(key)
    except TypeError:
        raise FormatError("pickle uses an unhashable dictionary key") from None
    return key
