"""The opcode machine of the inert unpickler: protocols 0-5, one implementation per opcode.

:meth:`Machine.run` reads opcodes until STOP. The opcodes a state dict is mostly made of (``_INLINE``) are
handled in its loop; every other opcode has one handler in ``_DISPATCH``. Whatever the pickle asks of a
global (GLOBAL, REDUCE, NEWOBJ, BUILD, ...) goes to :mod:`._allowlist`, which turns an allowlisted call into
data and anything else into a :class:`Stub`; nothing is imported, nothing is called. Budgets (opcodes,
stack, memo, integer size) are checked here.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import mmap
import struct

from ._allowlist import build, call, newobj, reference
from ._common import MAX_NAME, Budgets, EncodingError, FormatError, LimitError
from ._numpy import StubArray
from ._values import Global, Stub, hashable

TYPE_CHECKING = False  # typing is a 10 ms import; the jail's start-up budget is 50 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Machine"]


class Machine:
    """One run over one pickle: the stack, the marks, the memo, the position and what the format hooks in."""

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
        self.build_hook: Callable[[Machine, Stub], Any] | None = None
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

    # -- globals --------------------------------------------------------------------------------------
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
        return reference(module, name)

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
                    stack.append(call(self, a, b))
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


def _u(fmt: str) -> Callable[[Machine], int]:
    s = struct.Struct(fmt)

    size = s.size

    def read(m: Machine) -> int:
        pos = m.pos
        if pos + size > m.size:
            raise FormatError("pickle data was truncated")
        value: int = s.unpack_from(m.data, pos)[0]
        m.pos = pos + size
        return value

    return read


_u1, _u2, _u4, _u8, _i4 = _u("<B"), _u("<H"), _u("<I"), _u("<Q"), _u("<i")
_U4 = struct.Struct("<I")


def _op_pop(m: Machine) -> None:
    if m.marks and len(m.stack) == m.marks[-1]:
        m.pop_mark()  # CPython pops a MARK when the stack above it is empty
    else:
        m.pop()


def _op_pop_mark(m: Machine) -> None:
    m.pop_mark()


def _op_dup(m: Machine) -> None:
    m.stack.append(m.top())


def _op_float(m: Machine) -> None:
    try:
        m.stack.append(float(m.readline()))
    except ValueError:
        raise FormatError("pickle FLOAT is malformed") from None


def _op_int(m: Machine) -> None:
    line = m.readline()
    if line == b"00":
        m.stack.append(False)
    elif line == b"01":
        m.stack.append(True)
    else:
        m.stack.append(_parse_int(line, m))


def _parse_int(line: bytes, m: Machine) -> int:
    if len(line) > 2 * m.budgets.max_int_bytes:
        raise LimitError("pickle integer is too long")
    try:
        return int(line, 0) if line[:2] in (b"0x", b"0o") else int(line)
    except ValueError:
        raise FormatError("pickle INT is malformed") from None


def _op_long(m: Machine) -> None:
    line = m.readline()
    if line.endswith(b"L"):
        line = line[:-1]
    m.stack.append(_parse_int(line, m))


def _op_binint(m: Machine) -> None:
    m.stack.append(_i4(m))


def _op_binint2(m: Machine) -> None:
    m.stack.append(_u2(m))


def _op_none(m: Machine) -> None:
    m.stack.append(None)


def _persistent(m: Machine, pid: Any) -> None:
    if m.persistent_load is None:
        raise FormatError("pickle uses persistent ids, which this format does not define")
    m.stack.append(m.persistent_load(pid))


def _op_persid(m: Machine) -> None:
    try:
        pid = m.readline().decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("pickle PERSID is not ASCII") from None
    _persistent(m, pid)


def _op_binpersid(m: Machine) -> None:
    _persistent(m, m.pop())


def _string_literal(m: Machine, raw: bytes) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[:1] in (b"'", b'"'):
        raw = raw[1:-1]
    else:
        raise FormatError("pickle STRING is not quoted")
    try:
        value = codecs.escape_decode(raw)[0]
    except ValueError:
        raise FormatError("pickle STRING has a bad escape") from None
    return _py2_str(m, value)


def _py2_str(m: Machine, value: bytes) -> Any:
    if m.encoding == "bytes":
        return value
    return m.decode_str(value)


def _op_string(m: Machine) -> None:
    m.stack.append(_string_literal(m, m.readline()))


def _op_binstring(m: Machine) -> None:
    n = _i4(m)
    m.stack.append(_py2_str(m, m.read(n)))


def _op_short_binstring(m: Machine) -> None:
    m.stack.append(_py2_str(m, m.read(_u1(m))))


def _op_unicode(m: Machine) -> None:
    try:
        m.stack.append(m.readline().decode("raw-unicode-escape"))
    except UnicodeDecodeError:
        raise FormatError("pickle UNICODE is malformed") from None


def _utf8(m: Machine, n: int) -> None:
    try:
        m.stack.append(m.read(n).decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        raise FormatError("pickle string is not UTF-8") from None


def _op_binunicode(m: Machine) -> None:
    _utf8(m, _u4(m))


def _op_short_binunicode(m: Machine) -> None:
    _utf8(m, _u1(m))


def _op_binunicode8(m: Machine) -> None:
    _utf8(m, _u8(m))


def _long_bytes(m: Machine, n: int) -> None:
    at = m.pos
    raw = m.read(n)
    if m.nested is not None and n >= _NESTED_MIN:
        m.bytes_at[id(raw)] = (raw, at)
    m.stack.append(raw)


# Shorter byte strings cannot hold a torch.save file with a storage in it; not worth remembering.
_NESTED_MIN = 256


def _op_binbytes(m: Machine) -> None:
    _long_bytes(m, _u4(m))


def _op_short_binbytes(m: Machine) -> None:
    m.stack.append(m.read(_u1(m)))


def _op_binbytes8(m: Machine) -> None:
    _long_bytes(m, _u8(m))


def _op_bytearray8(m: Machine) -> None:
    m.stack.append(bytearray(m.read(_u8(m))))


def _op_next_buffer(m: Machine) -> None:
    raise FormatError("pickle refers to out-of-band buffers, which a file cannot carry")


def _op_readonly_buffer(m: Machine) -> None:
    m.top()


def _op_append(m: Machine) -> None:
    value = m.pop()
    _extend(m, m.top(), [value])


def _op_appends(m: Machine) -> None:
    items = m.pop_mark()
    _extend(m, m.top(), items)


def _extend(m: Machine, target: Any, items: list[Any]) -> None:
    if type(target) is list:
        target.extend(items)
    elif isinstance(target, Stub):
        target.listitems.extend(items)
    else:
        raise FormatError(f"pickle APPEND on a {type(target).__name__} value")


def _op_build(m: Machine) -> None:
    state = m.pop()
    obj = m.top()
    try:
        build(obj, state)
    except StubArray:
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


def _op_global(m: Machine) -> None:
    try:
        module = m.readline().decode("utf-8")
        name = m.readline().decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("pickle GLOBAL is not UTF-8") from None
    m.stack.append(m.find_class(module, name))


def _op_stack_global(m: Machine) -> None:
    name = m.pop()
    module = m.pop()
    if type(name) is not str or type(module) is not str:
        raise FormatError("pickle STACK_GLOBAL needs two strings")
    m.stack.append(m.find_class(module, name))


def _op_dict(m: Machine) -> None:
    items = m.pop_mark()
    if len(items) % 2:
        raise FormatError("pickle DICT has an odd number of items")
    d: dict[Any, Any] = {}
    for i in range(0, len(items), 2):
        d[hashable(items[i])] = items[i + 1]
    m.stack.append(d)


def _op_empty_dict(m: Machine) -> None:
    m.stack.append({})


def _op_setitem(m: Machine) -> None:
    value = m.pop()
    key = m.pop()
    _setitems(m, m.top(), [key, value])


def _op_setitems(m: Machine) -> None:
    items = m.pop_mark()
    if len(items) % 2:
        raise FormatError("pickle SETITEMS has an odd number of items")
    _setitems(m, m.top(), items)


def _setitems(m: Machine, target: Any, items: list[Any]) -> None:
    if isinstance(target, dict):
        for i in range(0, len(items), 2):
            target[hashable(items[i])] = items[i + 1]
    elif isinstance(target, Stub):
        target.dictitems.extend((items[i], items[i + 1]) for i in range(0, len(items), 2))
    else:
        raise FormatError(f"pickle SETITEM on a {type(target).__name__} value")


def _op_get(m: Machine) -> None:
    m.stack.append(m.memo_get(_parse_int(m.readline(), m)))


def _op_long_binget(m: Machine) -> None:
    m.stack.append(m.memo_get(_u4(m)))


def _op_put(m: Machine) -> None:
    key = _parse_int(m.readline(), m)
    if key < 0:
        raise FormatError("pickle PUT with a negative key")
    m.memo_put(key, m.top())


def _op_memoize(m: Machine) -> None:
    m.memo_put(len(m.memo), m.top())


def _op_inst(m: Machine) -> None:
    try:
        module = m.readline().decode("ascii")
        name = m.readline().decode("ascii")
    except UnicodeDecodeError:
        raise FormatError("pickle INST is not ASCII") from None
    args = tuple(m.pop_mark())
    m.stack.append(call(m, m.find_class(module, name), args))


def _op_obj(m: Machine) -> None:
    items = m.pop_mark()
    if not items:
        raise FormatError("pickle OBJ without a class")
    cls, args = items[0], tuple(items[1:])
    m.stack.append(call(m, cls, args) if args else newobj(m, cls, ()))


def _op_list(m: Machine) -> None:
    m.stack.append(m.pop_mark())


def _op_empty_list(m: Machine) -> None:
    m.stack.append([])


def _op_tuple(m: Machine) -> None:
    m.stack.append(tuple(m.pop_mark()))


def _op_tuple1(m: Machine) -> None:
    m.stack.append((m.pop(),))


def _op_tuple3(m: Machine) -> None:
    c = m.pop()
    b = m.pop()
    a = m.pop()
    m.stack.append((a, b, c))


def _op_binfloat(m: Machine) -> None:
    m.stack.append(struct.unpack(">d", m.read(8))[0])


def _op_proto(m: Machine) -> None:
    proto = _u1(m)
    if proto > 5:
        raise FormatError(f"pickle protocol {proto} is not supported")
    m.proto = proto


def _op_newobj(m: Machine) -> None:
    args = m.pop()
    cls = m.pop()
    if type(args) is not tuple:
        raise FormatError("pickle NEWOBJ arguments are not a tuple")
    m.stack.append(newobj(m, cls, args))


def _op_newobj_ex(m: Machine) -> None:
    kwargs = m.pop()
    args = m.pop()
    cls = m.pop()
    if type(args) is not tuple or not isinstance(kwargs, dict):
        raise FormatError("pickle NEWOBJ_EX arguments are malformed")
    obj = newobj(m, cls, args)
    if kwargs:
        if not isinstance(obj, Stub):
            obj = Stub(cls.module, cls.name, args, True) if isinstance(cls, Global) else obj
        if isinstance(obj, Stub):
            obj.kwargs = kwargs
    m.stack.append(obj)


def _op_ext(m: Machine) -> None:
    raise FormatError("pickle uses the copyreg extension registry (EXT1/2/4), which is empty in any loader")


def _op_newtrue(m: Machine) -> None:
    m.stack.append(True)


def _op_long1(m: Machine) -> None:
    m.stack.append(m.long(m.read(_u1(m))))


def _op_long4(m: Machine) -> None:
    n = _i4(m)
    if n < 0:
        raise FormatError("pickle LONG4 with a negative length")
    if n > m.budgets.max_int_bytes:
        raise LimitError(f"pickle integer longer than {m.budgets.max_int_bytes} bytes")
    m.stack.append(m.long(m.read(n)))


def _op_empty_set(m: Machine) -> None:
    m.stack.append(set())


def _op_additems(m: Machine) -> None:
    items = m.pop_mark()
    target = m.top()
    if isinstance(target, set):
        for item in items:
            target.add(hashable(item))
    elif isinstance(target, Stub):
        target.listitems.extend(items)
    else:
        raise FormatError(f"pickle ADDITEMS on a {type(target).__name__} value")


def _op_frozenset(m: Machine) -> None:
    items = m.pop_mark()
    m.stack.append(frozenset(hashable(i) for i in items))


def _op_frame(m: Machine) -> None:
    n = _u8(m)
    if n > len(m.data) - m.pos:
        raise FormatError("pickle FRAME is longer than the data")


# The opcodes :meth:`Machine.run` handles inline, the ones a state dict is mostly made of: MARK,
# EMPTY_TUPLE, BININT1, REDUCE, BINGET, BINPUT, LONG_BINPUT, TUPLE2, NEWFALSE (and STOP). Every other opcode
# has exactly one handler, in ``_DISPATCH``.
_INLINE = frozenset({0x28, 0x29, 0x4B, 0x52, 0x68, 0x71, 0x72, 0x86, 0x89})

_DISPATCH: dict[int, Callable[[Machine], None]] = {
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
