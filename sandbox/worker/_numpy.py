"""numpy in a pickle, as data: the allowlist's numpy builders and the BUILD state of dtypes and arrays.

``numpy.core.multiarray._reconstruct`` (and ``numpy._core``) makes an empty :class:`NDArray` that BUILD
fills from ``(version, shape, dtype, fortran, raw bytes or object list)``; ``numpy.dtype`` becomes an
:class:`NpDtype` whose byte order BUILD supplies; ``scalar`` and ``_frombuffer`` carry their bytes in their
arguments. Only plain numeric dtypes (and object arrays, whose elements are unpickled like anything else)
become data: an array of a structured, string or datetime dtype raises :class:`StubArray`, and the BUILD
opcode turns it into a stub.
"""

from __future__ import annotations

from ._common import FormatError
from ._values import Global, NDArray, NotData, NpDtype, NpScalar, as_ints

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from typing import Any

__all__ = ["StubArray", "build_ndarray", "build_np_dtype", "dtype", "frombuffer", "reconstruct", "scalar"]

MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")  # _reconstruct, scalar
NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")  # _frombuffer


class StubArray(Exception):
    """The array's dtype is not plain numbers: the array stays a stub."""


def reconstruct(m: object, args: tuple[Any, ...]) -> NDArray:
    """``_reconstruct(numpy.ndarray, (0,), b"b")``: an empty array that BUILD fills."""
    if len(args) != 3 or not isinstance(args[0], Global) or (args[0].module, args[0].name) != (
        "numpy", "ndarray"
    ):
        raise NotData
    return NDArray()


def scalar(m: object, args: tuple[Any, ...]) -> NpScalar:
    if len(args) != 2 or not isinstance(args[0], NpDtype) or args[0].typestr is None:
        raise NotData
    if type(args[1]) is not bytes:
        raise NotData
    return NpScalar(args[0].typestr, args[1])


def frombuffer(m: object, args: tuple[Any, ...]) -> NDArray:
    if len(args) != 4 or not isinstance(args[1], NpDtype) or args[1].typestr is None:
        raise NotData
    if type(args[0]) not in (bytes, bytearray) or args[3] not in ("C", "F"):
        raise NotData
    arr = NDArray()
    arr.dtype, arr.shape, arr.order = args[1].typestr, as_ints(args[2]), args[3]
    arr.data = bytes(args[0])
    _check_array_size(arr.shape, arr.dtype, arr.data)
    return arr


def dtype(m: object, args: tuple[Any, ...]) -> NpDtype:
    if len(args) != 3 or type(args[0]) not in (str, bytes):
        raise NotData
    # A Python 2 pickle read with encoding="bytes" names the dtype in bytes; numpy takes them.
    return NpDtype(args[0] if type(args[0]) is str else _ascii(args[0]))


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise NotData from None


def build_np_dtype(obj: NpDtype, state: Any) -> None:
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


def build_ndarray(obj: NDArray, state: Any) -> None:
    if type(state) is not tuple or len(state) != 5:
        raise FormatError("numpy array state is malformed")
    _, shape, dtype, fortran, raw = state
    try:
        shape = as_ints(shape)
    except NotData:
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
        raise StubArray
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


def _check_array_size(shape: tuple[int, ...], typestr: str, data: bytes) -> None:
    n = int(typestr[2:])
    for s in shape:
        n *= s
    if n != len(data):
        raise FormatError("numpy array data does not match its shape and dtype")
