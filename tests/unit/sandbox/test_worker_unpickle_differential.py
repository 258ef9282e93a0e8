"""The inert unpickler's one implementation per opcode, checked against CPython's unpickler on random pickles.

The main loop handles the opcodes a state dict is mostly made of inline and every other opcode through one
handler each; nothing else reads an opcode. Two properties hold it to CPython's semantics:

1. Random plain data (ints, floats, strings, bytes, bytearrays, complex numbers, lists, tuples, dicts,
   sets, frozensets, with shared containers) pickled with every protocol, as written and with unused
   memo entries dropped (``pickletools.optimize``): the inert result is CPython's, down to value types,
   float bits, dict order and which containers are the same object.
2. Random opcode soup (every opcode that builds plain data, with well-formed arguments, in any order):
   the inert unpickler raises only its typed errors, and whenever it accepts a stream CPython accepts it
   too and builds the same value (the inert reader may be stricter, e.g. SETITEM on a list, never looser).

The pickles are the test's own, never an artifact, so CPython may unpickle them (``allow_host_unpickling``).
"""

from __future__ import annotations

import pickle
import pickletools
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from safeload._sandbox.worker._common import EncodingError, FormatError, LimitError
from safeload._sandbox.worker._unpickle import unpickle

pytestmark = pytest.mark.allow_host_unpickling

_MUTABLE = (list, dict, set, bytearray)


def _same(a: Any, b: Any, pairs: dict[int, int]) -> bool:
    """``a`` (inert) and ``b`` (CPython) are the same value: types, float bits, order and sharing."""
    if type(a) is not type(b):
        return False
    if isinstance(a, _MUTABLE):
        # Sharing: each inert container stands for exactly one CPython container (cycles end here too).
        if id(a) in pairs:
            return pairs[id(a)] == id(b)
        if id(b) in pairs.values():
            return False
        pairs[id(a)] = id(b)
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b)
    if type(a) is complex:
        return _same(a.real, b.real, pairs) and _same(a.imag, b.imag, pairs)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y, pairs) for x, y in zip(a, b))
    if type(a) is dict:
        return len(a) == len(b) and all(
            _same(ka, kb, pairs) and _same(va, vb, pairs)
            for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if type(a) in (set, frozenset):
        # Elements are immutable; NaN bits make == unusable, so match them one by one.
        return len(a) == len(b) and all(any(_same(x, y, {}) for y in b) for x in a)
    return bool(a == b)


def _inert(data: bytes) -> tuple[Any, int]:
    result, end = unpickle(data)
    assert not result.globals_seen or all(m in ("builtins", "_codecs", "copyreg", "__builtin__")
                                          for m, _ in result.globals_seen)
    return result.root, end


# -- 1. pickle.dumps of random plain data --------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**80), 2**80), st.floats(),
    st.text(max_size=20), st.binary(max_size=20), st.complex_numbers(allow_nan=False),
)
_KEYS = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
              st.binary(max_size=8)),
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
    max_leaves=6,
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=5), st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(_KEYS, inner, max_size=5), st.sets(_KEYS, max_size=5),
        st.frozensets(_KEYS, max_size=5), st.binary(max_size=20).map(bytearray),
    )


_DATA = st.recursive(_SCALARS, _containers, max_leaves=30)


@st.composite
def _with_sharing(draw: st.DrawFn) -> Any:
    """A value in which one mutable container appears more than once (the memo must keep it one object)."""
    shared = draw(st.one_of(st.lists(_DATA, max_size=3), st.dictionaries(_KEYS, _DATA, max_size=3)))
    return [draw(_DATA), shared, {"again": shared}, (shared, draw(_DATA))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.one_of(_DATA, _with_sharing()), st.integers(0, 5), st.booleans())
def test_plain_data_reads_as_cpython_reads_it(value: Any, protocol: int, optimize: bool) -> None:
    data = pickle.dumps(value, protocol=protocol)
    if optimize:
        data = pickletools.optimize(data)
    note(repr(data))
    root, end = _inert(data)
    assert end == len(data)
    assert _same(root, pickle.loads(data), {})


# -- 2. random opcode soup -----------------------------------------------------------------------------


def _u(fmt: str, n: int) -> bytes:
    return struct.pack(fmt, n)


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _unicode_line(s: str) -> bytes:
    # Protocol 0's UNICODE argument, escaped as pickle writes it.
    for c, esc in (("\\", "\\u005c"), ("\0", "\\u0000"), ("\n", "\\u000a"), ("\r", "\\u000d"),
                   ("\x1a", "\\u001a")):
        s = s.replace(c, esc)
    return s.encode("raw-unicode-escape") + b"\n"


_NO_ARG = [bytes([op]) for op in b"()]}NN\x88\x89\x8f012aesu\x90\x91ltd\x85\x86\x87\x94"]
_MEMO_KEYS = st.integers(0, 3)
_TEXT = st.text(max_size=6)
_RAW = st.binary(max_size=6)
_PY2 = st.one_of(_RAW, _TEXT.map(_utf8))  # Python 2 str bytes

_OPS = st.one_of(
    st.sampled_from(_NO_ARG),
    st.integers(0, 255).map(lambda n: b"K" + _u("<B", n)),
    st.integers(0, 65535).map(lambda n: b"M" + _u("<H", n)),
    st.integers(-(2**31), 2**31 - 1).map(lambda n: b"J" + _u("<i", n)),
    st.one_of(st.integers(), st.sampled_from(["00", "01"])).map(lambda n: b"I" + str(n).encode() + b"\n"),
    st.integers().map(lambda n: b"L" + str(n).encode() + b"L\n"),
    st.binary(max_size=12).map(lambda b: b"\x8a" + _u("<B", len(b)) + b),
    st.binary(max_size=12).map(lambda b: b"\x8b" + _u("<i", len(b)) + b),
    st.binary(min_size=8, max_size=8).map(lambda b: b"G" + b),
    st.floats().map(lambda f: b"F" + repr(f).encode() + b"\n"),
    _TEXT.map(_utf8).map(lambda b: b"X" + _u("<I", len(b)) + b),
    _TEXT.map(_utf8).map(lambda b: b"\x8c" + _u("<B", len(b)) + b),
    _TEXT.map(_utf8).map(lambda b: b"\x8d" + _u("<Q", len(b)) + b),
    _TEXT.map(lambda s: b"V" + _unicode_line(s)),
    _RAW.map(lambda b: b"B" + _u("<I", len(b)) + b),
    _RAW.map(lambda b: b"C" + _u("<B", len(b)) + b),
    _RAW.map(lambda b: b"\x8e" + _u("<Q", len(b)) + b),
    _RAW.map(lambda b: b"\x96" + _u("<Q", len(b)) + b),
    _PY2.map(lambda b: b"U" + _u("<B", len(b)) + b),
    _PY2.map(lambda b: b"T" + _u("<i", len(b)) + b),
    _PY2.map(lambda b: b"S" + repr(b)[1:].encode() + b"\n"),
    _MEMO_KEYS.map(lambda k: b"q" + _u("<B", k)),
    _MEMO_KEYS.map(lambda k: b"r" + _u("<I", k)),
    _MEMO_KEYS.map(lambda k: b"p" + str(k).encode() + b"\n"),
    _MEMO_KEYS.map(lambda k: b"h" + _u("<B", k)),
    _MEMO_KEYS.map(lambda k: b"j" + _u("<I", k)),
    _MEMO_KEYS.map(lambda k: b"g" + str(k).encode() + b"\n"),
    st.integers(0, 5).map(lambda p: b"\x80" + _u("<B", p)),
)


@st.composite
def _soup(draw: st.DrawFn) -> bytes:
    ops = b"".join(draw(st.lists(_OPS, max_size=40)))
    # Half the time everything left on the stack is collected into one container, so that more soups
    # end in a value rather than in an underflow and whole structures get compared.
    close = draw(st.sampled_from([b"", b"", b"", b"l", b"t", b"d", b"\x91"]))
    if close:
        ops = b"(" + ops + close
    return draw(st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x05"])) + ops + b"."


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(_soup())
def test_opcode_soup_is_never_looser_than_cpython(data: bytes) -> None:
    note(repr(data))
    try:
        root, _ = _inert(data)
    except (FormatError, LimitError, EncodingError):
        return
    expected = pickle.loads(data, encoding="utf-8")
    assert _same(root, expected, {})
