"""The worker's inert unpickler: every opcode of protocols 0-5, and no global ever called.

These tests run the worker's unpickler in this process: it imports and calls nothing, which is the
property under test. Where a result is compared with CPython's own unpickler, the data is the test's
own (``allow_host_unpickling``), never an artifact.
"""

from __future__ import annotations

import argparse
import collections
import pickle
import pickletools
from typing import Any

import pytest

from safeload._sandbox.worker._common import Budgets, FormatError, LimitError
from safeload._sandbox.worker._unpickle import unpickle
from safeload._sandbox.worker._values import Global, Namespace, ODict, Stub


def _plain(obj: Any) -> Any:
    """The worker's data values as plain Python values, for comparison with CPython's result."""
    if isinstance(obj, ODict):
        return collections.OrderedDict((_plain(k), _plain(v)) for k, v in obj.items())
    if isinstance(obj, Namespace):
        return argparse.Namespace(**{k: _plain(v) for k, v in obj.items.items()})
    if isinstance(obj, dict):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(x) for x in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(_plain(x) for x in obj)
    return obj


VALUE = {
    "ints": [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, 2**64, -(2**300)],
    "floats": [0.0, -0.0, 1.5, float("inf"), 1e-310],
    "str": ["", "a", "é\u2603", "x" * 300, "line\nbreak", "back\\slash"],
    "bytes": [b"", b"\x00\xff", b"y" * 300],
    "bytearray": bytearray(b"ab"),
    "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
    "sets": [set(), {1, "a"}, frozenset(), frozenset({(1, 2)})],
    "dict": {1: "a", "b": None, (1, 2): True},
    "odict": collections.OrderedDict([("z", 1), ("a", [2])]),
    "ns": argparse.Namespace(lr=0.1, tags=["x"]),
    "complex": 3 - 4j,
    "slice": slice(1, None, -1),
    "bools": [True, False, None],
}


@pytest.mark.allow_host_unpickling
@pytest.mark.parametrize("protocol", range(6))
def test_matches_cpython_on_plain_data(protocol: int) -> None:
    shared: list[Any] = [1]
    value = dict(VALUE, shared=[shared, shared])
    data = pickle.dumps(value, protocol=protocol)
    result, end = unpickle(data)
    assert end == len(data)
    assert _plain(result.root) == pickle.loads(data)
    assert result.root["shared"][0] is result.root["shared"][1]


@pytest.mark.allow_host_unpickling
def test_recursive_list_keeps_identity() -> None:
    a: list[Any] = []
    a.append(a)
    root, _ = unpickle(pickle.dumps(a, protocol=2))
    assert root.root[0] is root.root


def test_reduce_never_calls_and_records_a_stub() -> None:
    data = b"cos\nsystem\n(S'touch /tmp/x'\ntR."
    result, _ = unpickle(data)
    stub = result.root
    assert isinstance(stub, Stub)
    assert (stub.module, stub.name, stub.args) == ("os", "system", ("touch /tmp/x",))
    assert result.globals_seen == {("os", "system"): 1}


def test_stack_global_through_the_memo_is_recorded() -> None:
    data = (
        b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94h\x02\x8c\x061+1+1+\x94\x85\x94R\x94."
    )
    result, _ = unpickle(data)
    assert isinstance(result.root, Stub) and (result.root.module, result.root.name) == ("builtins", "eval")


def test_inst_and_obj_are_stubs() -> None:
    inst = b"(S'id'\nios\nsystem\n."
    obj = b"(cos\nsystem\nS'id'\no."
    for data in (inst, obj):
        root = unpickle(data)[0].root
        assert isinstance(root, Stub) and (root.module, root.name, root.args) == ("os", "system", ("id",))


def test_build_on_a_stub_keeps_state_and_items() -> None:
    data = b"\x80\x02c__main__\nThing\n)\x81}X\x01\x00\x00\x00aK\x01sb."
    root = unpickle(data)[0].root
    assert isinstance(root, Stub) and root.name == "Thing" and root.state == {"a": 1}


def test_global_as_value_is_not_called() -> None:
    root = unpickle(b"cos\nsystem\n.")[0].root
    assert isinstance(root, Global) and (root.module, root.name) == ("os", "system")


def test_python2_names_are_mapped() -> None:
    root = unpickle(b"c__builtin__\nset\n((lp0\nI1\natR.")[0].root
    assert root == {1}


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\x80\x02", FormatError),  # no STOP
        (b"\x80\x06N.", FormatError),  # protocol 6
        (b"\x80\x02\x82\x01.", FormatError),  # EXT1: the extension registry is empty
        (b"\x80\x05\x97.", FormatError),  # NEXT_BUFFER without buffers
        (b"h\x05.", FormatError),  # memo key never stored
        (b"0.", FormatError),  # stack underflow
        (b"\x80\x02]K\x01K\x02\x86\x94}\x94(]\x94K\x01su.", FormatError),  # unhashable dict key
        (b"\x8b" + (1025).to_bytes(4, "little") + b"\x01" * 1025 + b".", LimitError),  # a 1025-byte int
        (b"(" * 1000 + b".", FormatError),
    ],
)
def test_malformed_or_oversized_is_a_typed_error(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        unpickle(data)


def test_opcode_budget() -> None:
    with pytest.raises(LimitError):
        unpickle(b"N0" * 1000 + b"N.", budgets=Budgets(max_ops=100))


def test_every_opcode_is_handled() -> None:
    from safeload._sandbox.worker import _machine

    known = {op.code.encode("latin-1")[0] for op in pickletools.opcodes}
    handled = set(_machine._DISPATCH) | _machine._INLINE | {ord(".")}
    assert known == handled
    # One implementation per opcode: the main loop's inline opcodes have no handler in the table.
    assert not set(_machine._DISPATCH) & _machine._INLINE


def test_the_allowlist_is_one_table() -> None:
    from safeload._sandbox.worker import _allowlist

    # NEWOBJ makes data only of allowlisted types; every other global, called, is a stub.
    assert set(_allowlist._NEW_EMPTY) <= set(_allowlist.ALLOWLIST)
    for module, name in [("os", "system"), ("builtins", "eval"), ("numpy", "ndarray"), ("torch", "Tensor")]:
        result, _ = unpickle(b"\x80\x02" + f"c{module}\n{name}\n)R.".encode())
        assert isinstance(result.root, Stub) and (result.root.module, result.root.name) == (module, name)
    assert ("torch", "Size") in _allowlist.ALLOWLIST
    assert ("os", "system") not in _allowlist.ALLOWLIST
