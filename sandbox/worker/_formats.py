"""Format detection from content and one reader per pickle-family format (standard library only)."""

from __future__ import annotations

import mmap
import struct
import sys
import zlib

from ._common import Budgets, FormatError, LimitError, is_location
from ._emit import StorageTable
from ._unpickle import unpickle
from ._values import Global, NDArray, NpDtype, StorageRef, Stub, Tensor
from ._zip import ZipArchive, is_zip
from .protocol import DTYPE_SIZES

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

__all__ = ["Parsed", "parse"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_PICKLE = 1 << 31
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "LongStorage": "int64",
    "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "UntypedStorage": "uint8",
}
# numpy type strings the host may rebuild as numeric arrays.
_NP_KINDS = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}


class Parsed:
    def __init__(self, fmt: str, root: Any, globals_seen: dict[tuple[str, str], int]) -> None:
        self.fmt = fmt
        self.root = root
        self.globals_seen = globals_seen


def _storage_dtype(stype: Any) -> str:
    if not isinstance(stype, Global) or stype.module not in ("torch", "torch.storage", "torch.cuda"):
        raise FormatError("torch persistent id names an unknown storage type")
    dtype = _STORAGE_DTYPES.get(stype.name)
    if dtype is None:
        raise FormatError(f"torch storage type {stype.name!r} is not supported")
    return dtype


def _check_str(v: Any, what: str) -> str:
    if type(v) is bytes:
        try:
            v = v.decode("ascii")
        except UnicodeDecodeError:
            raise FormatError(f"torch {what} is not ASCII") from None
    if type(v) is not str or not v or len(v) > 256:
        raise FormatError(f"torch {what} is malformed")
    return v


def _location(v: Any) -> str:
    loc = _check_str(v, "storage location")
    if not is_location(loc):
        raise FormatError(f"torch storage location {loc[:40]!r} is not a device name")
    return loc


def _np_typestr(descr: Any) -> str:
    if type(descr) is not str or len(descr) < 3 or descr[0] not in "<>|=":
        raise FormatError(f"npy dtype {descr!r} is not a plain numeric dtype")
    kind, size = descr[1], descr[2:]
    if kind not in _NP_KINDS or not size.isdigit() or int(size) not in _NP_KINDS[kind]:
        raise FormatError(f"npy dtype {descr!r} is not a plain numeric dtype")
    order = descr[0]
    if order == "=":
        order = "<"
    if int(size) == 1:
        order = "|"
    return order + kind + size


def _prod(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _Reader:
    def __init__(self, data: mmap.mmap, budgets: Budgets, encoding: str = "utf-8") -> None:
        self.data = data
        self.budgets = budgets
        self.encoding = encoding
        self.table = StorageTable(budgets)
        self.globals_seen: dict[tuple[str, str], int] = {}
        self.saw_joblib = False

    def merge_globals(self, seen: dict[tuple[str, str], int]) -> None:
        for k, v in seen.items():
            self.globals_seen[k] = self.globals_seen.get(k, 0) + v

    def unpickle(self, data: Any, **kw: Any) -> tuple[Any, int]:
        result, end = unpickle(data, budgets=self.budgets, encoding=self.encoding, **kw)
        self.merge_globals(result.globals_seen)
        return result.root, end

    # -- torch zip and TorchScript ----------------------------------------------------------------------
    def torch_zip(self, z: ZipArchive, prefix: str, pkl: str, data_dir: str, base: int | None = 0) -> Any:
        """A torch zip's pickle; ``base``: where ``z`` starts in the input (None: not in it verbatim)."""
        storages: dict[str, StorageRef] = {}

        def persistent_load(pid: Any) -> StorageRef:
            if type(pid) is not tuple or len(pid) != 5 or _check_str(pid[0], "persistent id") != "storage":
                raise FormatError("torch persistent id is not ('storage', type, key, location, numel)")
            dtype = _storage_dtype(pid[1])
            key = _check_str(pid[2], "storage key")
            location = _location(pid[3])
            numel = pid[4]
            if type(numel) is not int or numel < 0:
                raise FormatError("torch storage size is malformed")
            if key in storages:
                return storages[key]
            name = f"{prefix}{data_dir}{key}"
            member = z.members.get(name)
            if member is None:
                raise FormatError(f"torch storage {name!r} is missing from the archive")
            nbytes = numel * DTYPE_SIZES[dtype]
            if member.size < nbytes:
                raise FormatError(f"torch storage {name!r} is shorter than the tensor it holds")
            unit = _swap_unit(dtype)
            if big_endian and unit > 1:
                # torch.load swaps by the storage's element size (untyped storages are not swapped).
                ref = self.table.add_output(
                    dtype, nbytes, location, lambda: (_byteswap(z.read(name, nbytes)[:nbytes], unit),)
                )
            elif member.method == 0 and base is not None:
                ref = self.table.add_input(dtype, nbytes, location, base + member.data_offset)
            else:
                ref = self.table.add_output(dtype, nbytes, location, lambda: _take(z.stream(name), nbytes))
            storages[key] = ref
            return ref

        big_endian = False
        if f"{prefix}byteorder" in z.members:
            order = z.read(f"{prefix}byteorder", 16)
            if order not in (b"little", b"big"):
                raise FormatError(f"torch byteorder record {order[:16]!r} is neither little nor big")
            big_endian = order == b"big"
        raw = z.read(prefix + pkl, _MAX_PICKLE)
        root, _ = self.unpickle(raw, persistent_load=persistent_load)
        return root

    # -- legacy torch ------------------------------------------------------------------------------------
    def torch_legacy(self, data: bytes | mmap.mmap | None = None, base: int | None = 0) -> Any:
        """A legacy torch file (``data``, default the input; ``base``: where it starts in the input)."""
        if data is None:
            data = self.data
        magic, pos = self.unpickle(data)
        if magic != _LEGACY_MAGIC:
            raise FormatError("not a torch legacy file")
        proto, pos = self.unpickle(data, start=pos)
        if proto != _LEGACY_PROTOCOL:
            raise FormatError(f"torch legacy protocol {proto!r} is not supported")
        sys_info, pos = self.unpickle(data, start=pos)
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            raise FormatError("torch legacy file is not little-endian (or lacks its system info)")
        roots: dict[str, tuple[StorageRef, str, int]] = {}
        views: list[tuple[StorageRef, str, int]] = []

        def persistent_load(pid: Any) -> Any:
            if type(pid) is tuple and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], Global):
                # Legacy files persist a module's class with its source code; the class stays a name.
                return pid[1]
            if type(pid) is not tuple or len(pid) != 6 or _check_str(pid[0], "persistent id") != "storage":
                raise FormatError("torch legacy persistent id is malformed")
            dtype = _storage_dtype(pid[1])
            key = _check_str(pid[2], "storage key")
            location = _location(pid[3])
            numel, view = pid[4], pid[5]
            if type(numel) is not int or numel < 0:
                raise FormatError("torch storage size is malformed")
            if key not in roots:
                roots[key] = (self.table.add_input(dtype, numel * DTYPE_SIZES[dtype], location, None), dtype,
                              numel)
            root_ref, root_dtype, root_numel = roots[key]
            if view is None:
                return root_ref
            if (type(view) is not tuple or len(view) != 3 or type(view[1]) is not int
                    or type(view[2]) is not int or view[1] < 0 or view[2] < 0
                    or view[1] + view[2] > root_numel):
                raise FormatError("torch legacy storage view is malformed")
            size = DTYPE_SIZES[root_dtype]
            ref = self.table.add_input(root_dtype, view[2] * size, location, None)
            views.append((ref, key, view[1] * size))
            return ref

        root, pos = self.unpickle(data, start=pos, persistent_load=persistent_load)
        keys, pos = self.unpickle(data, start=pos)
        if not isinstance(keys, list) or any(type(k) is not str for k in keys):
            raise FormatError("torch legacy storage key list is malformed")
        offsets: dict[str, int] = {}
        size = len(data)
        for key in keys:
            if key not in roots:
                raise FormatError(f"torch legacy storage {key!r} is not referenced by the pickle")
            ref, dtype, numel = roots[key]
            if pos + 8 > size:
                raise FormatError("torch legacy file is truncated")
            (stored_numel,) = struct.unpack("<q", data[pos : pos + 8])
            if stored_numel != numel:
                raise FormatError(f"torch legacy storage {key!r} has {stored_numel} elements, not {numel}")
            pos += 8
            end = pos + numel * DTYPE_SIZES[dtype]
            if end > size:
                raise FormatError("torch legacy file is truncated")
            self.place(ref, data, base, pos)
            offsets[key] = pos
            pos = end
        for ref, key, byte_offset in views:
            if key not in offsets:
                raise FormatError(f"torch legacy storage {key!r} has no data")
            self.place(ref, data, base, offsets[key] + byte_offset)
        return root

    def place(self, ref: StorageRef, data: bytes | mmap.mmap, base: int | None, pos: int) -> None:
        """The storage's bytes are at ``pos`` of ``data``, which starts at ``base`` of the input."""
        if base is not None:
            self.table.set_offset(ref, base + pos)
            return
        end = pos + self.table.specs[ref.index]["nbytes"]
        self.table.set_output(ref, lambda: (bytes(data[pos:end]),))

    # -- torch.storage._load_from_bytes inside a plain pickle -------------------------------------------
    def nested_hook(self, base: int | None) -> Callable[[bytes, int | None], Any]:
        """Reads the torch.save file that ``pickle.dump`` of a tensor embeds for each storage.

        ``base`` is where the outer pickle starts in the input (None: decompressed, not mappable). The
        nested file is read with the same strict readers and budgets, but its own pickles get no hook,
        so a ``_load_from_bytes`` inside it stays a stub.
        """

        def load_from_bytes(raw: bytes, at: int | None) -> Any:
            offset = None if base is None or at is None else base + at
            if is_zip(raw[:4]):
                z = ZipArchive(raw)
                kind, prefix = _zip_kind(z)
                if kind != "torch_zip":
                    raise FormatError("a pickled storage holds a zip archive that is not a torch checkpoint")
                return self.torch_zip(z, prefix, "data.pkl", "data/", offset)
            if raw[:3] == b"\x80\x02\x8a" and raw[4:14] == _LEGACY_MAGIC.to_bytes(10, "little"):
                return self.torch_legacy(raw, offset)
            raise FormatError("a pickled storage's bytes are not a torch.save file")

        return load_from_bytes

    # -- legacy torch tar (torch < 0.4) -------------------------------------------------------------------
    def torch_tar(self) -> Any:
        data = self.data
        # Formats that need a heavier module import it themselves: the jail's start-up stays small.
        import io
        import tarfile

        try:
            tar = tarfile.open(fileobj=io.BytesIO(data) if isinstance(data, bytes) else data, mode="r:")
            members = {}
            for i, member in enumerate(tar):
                if i >= 16:
                    raise FormatError("torch tar checkpoint has more members than the format defines")
                if member.isreg():
                    members[member.name] = (member.offset_data, member.size)
        except (tarfile.TarError, EOFError, ValueError) as exc:
            raise FormatError(f"not a readable tar archive: {exc}") from None
        if not {"storages", "tensors", "pickle"} <= set(members):
            raise FormatError("tar archive lacks the storages, tensors and pickle of a torch checkpoint")
        for off, size in members.values():
            if off + size > len(data):
                raise FormatError("tar member runs past the end of the file")

        def region(name: str) -> tuple[int, int]:
            off, size = members[name]
            return off, off + size

        def read_struct(fmt: str, pos: int, end: int) -> tuple[Any, ...]:
            n = struct.calcsize(fmt)
            if pos + n > end:
                raise FormatError("torch tar member is truncated")
            return struct.unpack(fmt, data[pos : pos + n])

        storages: dict[Any, StorageRef] = {}
        pos, end = region("storages")
        count, pos = self.unpickle(data, start=pos)
        if type(count) is not int or count < 0:
            raise FormatError("torch tar storage count is malformed")
        for _ in range(count):
            args, pos = self.unpickle(data, start=pos)
            if type(args) is not tuple or len(args) != 3 or type(args[0]) not in (int, str):
                raise FormatError("torch tar storage record is malformed")
            dtype = _storage_dtype(args[2])
            location = _location(args[1])
            (numel,) = read_struct("<q", pos, end)
            pos += 8
            nbytes = numel * DTYPE_SIZES[dtype]
            if numel < 0 or pos + nbytes > end:
                raise FormatError("torch tar storage is truncated")
            storages[args[0]] = self.table.add_input(dtype, nbytes, location, pos)
            pos += nbytes
        views, pos = self.unpickle(data, start=pos)
        if not isinstance(views, list):
            raise FormatError("torch tar storage views are malformed")
        for view in views:
            if (type(view) is not tuple or len(view) != 4 or not _hashable(view[1]) or view[1] not in storages
                    or type(view[2]) is not int or type(view[3]) is not int or view[2] < 0 or view[3] < 0):
                raise FormatError("torch tar storage view is malformed")
            root = storages[view[1]]
            spec = self.table.specs[root.index]
            size = DTYPE_SIZES[root.dtype]
            if (view[2] + view[3]) * size > spec["nbytes"]:
                raise FormatError("torch tar storage view lies outside its storage")
            storages[view[0]] = self.table.add_input(
                root.dtype, view[3] * size, spec["location"], spec["source"]["offset"] + view[2] * size
            )
        objects: dict[int, Any] = {}
        pos, end = region("tensors")
        count, pos = self.unpickle(data, start=pos)
        if type(count) is not int or count < 0:
            raise FormatError("torch tar tensor count is malformed")
        for _ in range(count):
            args, pos = self.unpickle(data, start=pos)
            if type(args) is not tuple or len(args) != 3 or type(args[0]) is not int:
                raise FormatError("torch tar tensor record is malformed")
            if not _hashable(args[1]) or args[1] not in storages:
                raise FormatError("torch tar tensor record is malformed")
            (ndim,) = read_struct("<i", pos, end)
            if not 0 <= ndim <= 64:
                raise FormatError("torch tar tensor has a bad number of dimensions")
            pos += 8
            sizes = read_struct(f"<{ndim}q", pos, end)
            pos += 8 * ndim
            strides = read_struct(f"<{ndim}q", pos, end)
            pos += 8 * ndim
            (offset,) = read_struct("<q", pos, end)
            pos += 8
            if offset < 0 or any(x < 0 for x in sizes + strides):
                raise FormatError("torch tar tensor geometry is malformed")
            storage = storages[args[1]]
            objects[args[0]] = Tensor(storage, offset, sizes, strides, storage.dtype, False)
        for key, ref in storages.items():
            if type(key) is int:
                objects.setdefault(key, ref)

        def persistent_load(pid: Any) -> Any:
            if type(pid) is tuple and pid and isinstance(pid[0], Global):
                return pid[0]  # a module class persisted with its source: the class stays a name
            try:
                return objects[int(pid)]
            except (KeyError, TypeError, ValueError):
                raise FormatError("torch tar pickle refers to an object it did not save") from None

        start, _ = region("pickle")
        root, _ = self.unpickle(data, start=start, persistent_load=persistent_load)
        return root

    # -- joblib -----------------------------------------------------------------------------------------
    def joblib_hook(self, base: int | None) -> Callable[[Any, Stub], Any]:
        """Reads the array bytes joblib writes after each ``NumpyArrayWrapper`` (``base``: input offset)."""

        def hook(m: Any, stub: Stub) -> Any:
            if (stub.module, stub.name) != ("joblib.numpy_pickle", "NumpyArrayWrapper"):
                return None
            st = stub.state
            if not isinstance(st, dict):
                raise FormatError("joblib array wrapper has no state")
            shape, order, dtype = st.get("shape"), st.get("order", "C"), st.get("dtype")
            align = st.get("numpy_array_alignment_bytes")
            if (type(shape) is not tuple or any(type(x) is not int or x < 0 for x in shape)
                    or order not in ("C", "F") or not isinstance(dtype, NpDtype)
                    or (align is not None and type(align) is not int)):
                raise FormatError("joblib array wrapper state is malformed")
            self.saw_joblib = True
            if dtype.kind in ("O8", "O4"):
                result, end = unpickle(m.data, budgets=self.budgets, encoding=self.encoding, start=m.pos,
                                       build_hook=hook)
                self.merge_globals(result.globals_seen)
                m.pos = end
                return result.root
            if dtype.typestr is None:
                raise FormatError("joblib array dtype is not a plain numeric dtype")
            if align is not None:
                m.read(m.read(1)[0])
            typestr = dtype.typestr
            nbytes = _prod(shape) * int(typestr[2:])
            start = m.pos
            m.read(0)
            if start + nbytes > len(m.data):
                raise FormatError("joblib array data is truncated")
            m.pos = start + nbytes
            arr = NDArray()
            arr.shape, arr.order = shape, order
            if typestr[0] == ">":
                # joblib.load makes arrays native-endian by default.
                unit = int(typestr[2:]) // (2 if typestr[1] == "c" else 1)
                raw = bytes(m.data[start : start + nbytes])
                arr.dtype, arr.data = "<" + typestr[1:], _byteswap(raw, unit)
            elif base is not None:
                arr.dtype = typestr
                arr.storage = self.table.add_input("uint8", nbytes, "cpu", base + start)
            else:
                arr.dtype, arr.data = typestr, bytes(m.data[start : start + nbytes])
            return arr

        return hook

    def raw_pickle(self, data: Any, base: int | None) -> Parsed:
        self.saw_joblib = False
        root, _ = self.unpickle(data, build_hook=self.joblib_hook(base), nested=self.nested_hook(base))
        return Parsed("joblib" if self.saw_joblib else "pickle", root, self.globals_seen)

    # -- numpy ------------------------------------------------------------------------------------------
    def npy(self, data: Any, base: int | None, chunks_of: Any = None) -> Any:
        """An .npy file in ``data``; ``base`` is its absolute offset in the input (None: not mappable)."""
        head = bytes(data[:10])
        if head[:6] != b"\x93NUMPY":
            raise FormatError("not a .npy file")
        major = head[6]
        if major == 1:
            (hlen,) = struct.unpack("<H", head[8:10])
            start = 10
        elif major in (2, 3):
            (hlen,) = struct.unpack("<I", bytes(data[8:12]))
            start = 12
        else:
            raise FormatError(f".npy version {major} is not supported")
        if hlen > 100_000:
            raise LimitError(".npy header is longer than 100000 bytes")
        import ast
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = ast.literal_eval(bytes(data[start : start + hlen]).decode("latin-1"))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise FormatError(".npy header is not a Python literal") from None
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise FormatError(".npy header lacks descr, fortran_order or shape")
        shape, fortran = header["shape"], header["fortran_order"]
        if (type(shape) is not tuple or any(type(s) is not int or s < 0 for s in shape)
                or type(fortran) is not bool or len(shape) > 64):
            raise FormatError(".npy header shape is malformed")
        body = start + hlen
        if header["descr"] in ("|O", "O"):
            root, _ = self.unpickle(data if isinstance(data, (bytes, mmap.mmap)) else bytes(data), start=body)
            return root
        typestr = _np_typestr(header["descr"])
        nbytes = _prod(shape) * int(typestr[2:])
        if body + nbytes > len(data):
            raise FormatError(".npy file is shorter than its header says")
        arr = NDArray()
        arr.dtype, arr.shape, arr.order = typestr, shape, "F" if fortran else "C"
        if base is not None:
            arr.storage = self.table.add_input("uint8", nbytes, "cpu", base + body)
        else:
            arr.storage = self.table.add_output(
                "uint8", nbytes, "cpu", lambda: (bytes(data[body : body + nbytes]),)
            )
        return arr

    def npz(self, z: ZipArchive) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, member in z.members.items():
            key = name[:-4] if name.endswith(".npy") else name
            if member.method == 0:
                view = _Slice(self.data, member.data_offset, member.size)
                out[key] = self.npy(view, member.data_offset)
            else:
                out[key] = self.npy(z.read(name, self.budgets.max_output_bytes), None)
        return out


class _Slice:
    """A window on the input, indexable like bytes, without copying it."""

    def __init__(self, data: mmap.mmap, start: int, size: int) -> None:
        self.data = data
        self.start = start
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> bytes:
        lo, hi, _ = s.indices(self.size)
        return bytes(self.data[self.start + lo : self.start + max(lo, hi)])

    def __bytes__(self) -> bytes:
        return bytes(self.data[self.start : self.start + self.size])


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _swap_unit(dtype: str) -> int:
    size = DTYPE_SIZES[dtype]
    return max(size // 2, 1) if dtype.startswith("complex") else size


def _byteswap(data: bytes, unit: int) -> bytes:
    if len(data) % unit:
        raise FormatError("storage is not a whole number of elements")
    import array  # only big-endian files need it (it pulls in collections at start-up)

    arr = array.array({2: "H", 4: "I", 8: "Q"}[unit])
    arr.frombytes(data)
    arr.byteswap()
    return arr.tobytes()


def _take(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    got = 0
    for chunk in chunks:
        if got + len(chunk) > n:
            chunk = chunk[: n - got]
        got += len(chunk)
        if chunk:
            yield chunk
        if got >= n:
            break


def _zip_kind(z: ZipArchive) -> tuple[str, str]:
    names = list(z.members)
    if names and all(n.endswith(".npy") for n in names):
        return "npz", ""
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise FormatError("zip archive is neither a torch checkpoint (one <dir>/data.pkl) nor an .npz")
    prefix = pkls[0][: -len("data.pkl")]
    if any(not n.startswith(prefix) for n in names):
        raise FormatError("torch zip archive has members outside its record folder")
    if f"{prefix}constants.pkl" in z.members or any(n.startswith(f"{prefix}code/") for n in names):
        return "torchscript", prefix
    return "torch_zip", prefix


def parse(data: mmap.mmap, budgets: Budgets, encoding: str = "utf-8") -> tuple[Parsed, StorageTable]:
    """Detect the format of ``data`` from its content and read it inertly.

    ``encoding`` decodes Python 2 strings (STRING, BINSTRING, SHORT_BINSTRING) as ``pickle.load``'s
    argument of that name does; ``"bytes"`` keeps them as bytes.

    Raises:
        FormatError: not a format the worker reads.
        LimitError: a budget ran out.
    """
    r = _Reader(data, budgets, encoding)
    head = bytes(data[:512])
    if is_zip(head):
        z = ZipArchive(data)
        kind, prefix = _zip_kind(z)
        if kind == "npz":
            root: Any = r.npz(z)
        elif kind == "torch_zip":
            root = r.torch_zip(z, prefix, "data.pkl", "data/")
        else:
            root = {"data": r.torch_zip(z, prefix, "data.pkl", "data/")}
            if f"{prefix}constants.pkl" in z.members:
                root["constants"] = r.torch_zip(z, prefix, "constants.pkl", "constants/")
        return Parsed(kind, root, r.globals_seen), r.table
    if head[:6] == b"\x93NUMPY":
        return Parsed("npy", r.npy(data, 0), r.globals_seen), r.table
    if len(head) >= 262 and head[257:262] == b"ustar":
        return Parsed("torch_legacy_tar", r.torch_tar(), r.globals_seen), r.table
    if head[:3] == b"\x80\x02\x8a" and head[4:14] == _LEGACY_MAGIC.to_bytes(10, "little"):
        return Parsed("torch_legacy", r.torch_legacy(), r.globals_seen), r.table
    decompress = _compressed(head)
    if decompress is not None:
        # joblib.dump(compress=...) output: a pickle (with joblib's array bytes) inside zlib/gzip/bz2/xz.
        plain = decompress(data, budgets.max_output_bytes)
        if not plain or plain[0] not in _PICKLE_FIRST:
            raise FormatError("compressed file does not hold a pickle")
        return r.raw_pickle(plain, None), r.table
    if not head or head[0] not in _PICKLE_FIRST:
        raise FormatError(
            "the file is not safetensors, a torch checkpoint, a pickle or a numpy file; "
            "safeload opens only those formats"
        )
    return r.raw_pickle(data, 0), r.table


def _compressed(head: bytes) -> Callable[[Any, int], bytes] | None:
    if head[:1] == b"\x78" and len(head) > 1 and (head[0] * 256 + head[1]) % 31 == 0:
        return lambda data, cap: _inflate(zlib.decompressobj(), data, cap)
    if head[:2] == b"\x1f\x8b":
        return lambda data, cap: _inflate(zlib.decompressobj(31), data, cap)
    if head[:3] == b"BZh":
        import bz2

        return lambda data, cap: _inflate(bz2.BZ2Decompressor(), data, cap)
    if head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"]\x00\x00":
        import lzma

        return lambda data, cap: _inflate(lzma.LZMADecompressor(), data, cap)
    return None


def _lzma_error() -> type[Exception]:
    lzma = sys.modules.get("lzma")  # imported only when an xz/lzma stream was seen
    return lzma.LZMAError if lzma is not None else OSError


def _inflate(d: Any, data: Any, cap: int) -> bytes:
    """Decompress all of ``data`` with decompressor ``d``, never holding more than ``cap`` bytes."""
    out = bytearray()
    pos, size, step = 0, len(data), 1 << 22
    is_zlib = hasattr(d, "unconsumed_tail")
    try:
        while not d.eof:
            if is_zlib and d.unconsumed_tail:
                feed = d.unconsumed_tail
            elif not is_zlib and not d.needs_input:
                feed = b""
            elif pos < size:
                feed = bytes(data[pos : pos + step])
                pos += len(feed)
            else:
                raise FormatError("compressed data is truncated")
            out += d.decompress(feed, step)
            if len(out) > cap:
                raise LimitError(f"compressed file inflates past the {cap}-byte output budget")
    except (zlib.error, OSError, EOFError, _lzma_error()) as exc:
        raise FormatError(f"compressed data is corrupt: {exc}") from None
    return bytes(out)


# Opcodes a pickle can start with (PROTO for protocol 2+, anything pushing a value for 0 and 1).
_PICKLE_FIRST = frozenset(b"\x80(NIJKLMFGSTUVXBC]})lcdig" + bytes([0x8C, 0x8D, 0x8E, 0x95]))
