"""The fast validation pass accepts nothing the full validator refuses, and computes the same results.

Manifests shaped like state dicts are mutated at random (a field changed to a wrong type, an out-of-range
number, a key added or dropped, a ref to a missing or incomplete id); whenever the fast pass accepts one,
the full validator must accept it too, with the same storage alignments and ids.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeload._loading.manifest import _Fallback, _FastValidator, _Invalid, _Validator

_STORAGES = [{"id": 0, "dtype": "float32", "nbytes": 64, "location": "cpu", "source": None},
             {"id": 1, "dtype": "uint8", "nbytes": 8, "location": "cpu", "source": None}]


def _tensor(storage: int, offset: int, shape: list[int], stride: list[int], dtype: str, tid: int | None,
            requires_grad: bool) -> dict[str, Any]:
    node = {"t": "tensor", "storage": storage, "offset": offset, "shape": shape, "stride": stride,
            "dtype": dtype, "requires_grad": requires_grad}
    if tid is not None:
        node["id"] = tid
    return node


def _base() -> dict[str, Any]:
    t0 = _tensor(0, 0, [4, 4], [4, 1], "float32", 1, False)
    items: list[Any] = [
        [{"t": "str", "v": "w"}, t0],
        [{"t": "str", "v": "again"}, {"t": "ref", "id": 1}],
        [{"t": "str", "v": "p"},
         {"t": "parameter", "id": 2, "data": _tensor(0, 2, [3], [2], "float16", 3, True),
          "requires_grad": True}],
        [{"t": "str", "v": "b"}, _tensor(1, 0, [2], [1], "int32", None, False)],
        [{"t": "int", "v": 3}, {"t": "list", "id": 4, "items": [{"t": "none"}, {"t": "bool", "v": True},
                                                               {"t": "ref", "id": 4}]}],
        [{"t": "str", "v": "tup"}, {"t": "tuple", "items": [{"t": "int", "v": -1}]}],
    ]
    return {"t": "odict", "id": 0, "items": items}


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 80), st.just(1 << 62), st.just("tensor"), st.just("ref"),
    st.just("float64"), st.just("bogus"), st.just([]), st.just([1, 2]), st.just([-1]), st.just({}),
    st.sampled_from([2, 3, 4, 0, 1, 99]),
)


def _nodes(tree: Any, out: list[Any]) -> list[Any]:
    if isinstance(tree, dict):
        out.append(tree)
        for v in tree.values():
            _nodes(v, out)
    elif isinstance(tree, list):
        out.append(tree)
        for v in tree:
            _nodes(v, out)
    return out


def _result(cls: type[_Validator], root: Any) -> tuple[list[int], dict[int, tuple[str, bool]]] | None:
    v = cls(copy.deepcopy(_STORAGES), 1000, 50)
    try:
        if isinstance(v, _FastValidator):
            v.fast(root, 0)
        else:
            v.node(root, "root", 0)
    except (_Fallback, _Invalid, KeyError, TypeError):
        return None
    return v.align, v.ids


def test_the_unmutated_manifest_takes_the_fast_path() -> None:
    assert _result(_FastValidator, _base()) == _result(_Validator, _base()) is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_pass_never_accepts_what_the_full_validator_refuses(data: st.DataObject) -> None:
    root = _base()
    for _ in range(data.draw(st.integers(1, 3))):
        containers = _nodes(root, [])
        # Half the mutations hit the tensor-shaped nodes, where the fast pass has its own checks.
        kinds = ("tensor", "parameter", "ref")
        views = [c for c in containers if isinstance(c, dict) and c.get("t") in kinds]
        target = data.draw(st.sampled_from(views if views and data.draw(st.booleans()) else containers))
        if isinstance(target, dict):
            key = data.draw(st.sampled_from([*target, "extra"]))
            if data.draw(st.booleans()) and key in target:
                del target[key]
            else:
                target[key] = copy.deepcopy(data.draw(_VALUES))
        elif target:
            i = data.draw(st.integers(0, len(target) - 1))
            target[i] = copy.deepcopy(data.draw(_VALUES))
    fast = _result(_FastValidator, root)
    if fast is not None:
        assert _result(_Validator, root) == fast
