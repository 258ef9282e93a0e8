"""Manifest validation: a manifest that passes describes only in-bounds views of bytes the host holds."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import pytest
import torch

from safeload import Stub, state_dict
from safeload._loading.manifest import parse_manifest
from safeload._loading.rebuild import build, make_restore
from safeload.errors import SandboxError, UnsafeContentError


def _tensor(
    storage: int = 0, offset: int = 0, shape: list[int] | None = None, stride: list[int] | None = None,
    dtype: str = "float32", **extra: Any,
) -> dict[str, Any]:
    return {"t": "tensor", "storage": storage, "offset": offset, "shape": shape if shape is not None else [4],
            "stride": stride if stride is not None else [1], "dtype": dtype, "requires_grad": False, **extra}


def _doc(root: Any, nbytes: int = 16, source: Any = None) -> dict[str, Any]:
    return {
        "version": 1, "format": "torch_zip", "byteorder": "little",
        "storages": [{"id": 0, "dtype": "float32", "nbytes": nbytes, "location": "cpu",
                      "source": source or {"kind": "input", "offset": 0, "length": nbytes}}],
        "root": root,
        "globals": [{"module": "torch._utils", "name": "_rebuild_tensor_v2", "verdict": "data", "count": 1}],
    }


def _parse(doc: dict[str, Any], input_size: int = 64, outputs: dict[str, int] | None = None) -> Any:
    return parse_manifest(json.dumps(doc).encode(), input_size=input_size, outputs=outputs or {})


def test_valid_manifest_builds_views_sharing_storage() -> None:
    a = _tensor(id=1)
    root = {"t": "dict", "id": 0, "items": [
        [{"t": "str", "v": "a"}, a],
        [{"t": "str", "v": "tail"}, _tensor(offset=1, shape=[3])],
        [{"t": "str", "v": "again"}, {"t": "ref", "id": 1}],
    ]}
    m = _parse(_doc(root))
    raw = torch.arange(16, dtype=torch.uint8)
    out = build(m, [raw], make_restore(None))
    assert out["again"] is out["a"]
    assert out["tail"].untyped_storage().data_ptr() == out["a"].untyped_storage().data_ptr()


@pytest.mark.parametrize(
    "root",
    [
        _tensor(shape=[5]),  # 20 bytes from a 16-byte storage
        _tensor(offset=1, shape=[4]),
        _tensor(shape=[2, 2], stride=[3, 1]),  # reaches element 4
        _tensor(shape=[2], stride=[-1, 1]),
        _tensor(shape=[2], stride=[1, 1]),  # shape and stride disagree
        _tensor(dtype="float64", shape=[3]),  # 24 bytes
        _tensor(storage=1),
        _tensor(offset=-1),
        _tensor(dtype="int32", requires_grad=True),
        {**_tensor(), "extra": 1},
        {"t": "ref", "id": 7},
        {"t": "tuple", "id": 0, "items": [{"t": "ref", "id": 0}]},  # a tuple that contains itself
        {"t": "list", "id": 0, "items": [{"t": "list", "id": 0, "items": []}]},  # id twice
        {"t": "ndarray", "storage": 0, "dtype": "<f8", "shape": [3], "order": "C"},
        {"t": "ndarray", "storage": 0, "dtype": "|O", "shape": [1], "order": "C"},
        {"t": "odict", "id": 0, "items": [], "attrs": [["__class__", {"t": "none"}]]},
        {"t": "odict", "id": 0, "items": [], "attrs": [["items", {"t": "none"}]]},  # would shadow .items()
        {"t": "namespace", "id": 0, "items": [["_get_kwargs", {"t": "none"}]]},
        {"t": "parameter", "data": {"t": "int", "v": 1}, "requires_grad": True},
        {"t": "eval", "v": "os.system('id')"},
        {"t": "int", "v": True},
        {"t": "float", "v": "not-hex"},
        {"t": "bytes", "b64": "!!"},
    ],
)
def test_invalid_nodes_are_refused(root: Any) -> None:
    with pytest.raises(SandboxError):
        _parse(_doc(root))


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["storages"][0]["source"].update(offset=60),  # past the end of a 64-byte input
        lambda d: d["storages"][0].update(nbytes=15),  # not whole float32 elements
        lambda d: d["storages"][0].update(location="cpu; rm -rf /"),
        lambda d: d["storages"][0].update(id=3),
        lambda d: d.update(version=2),
        lambda d: d.update(format=["torch_zip"]),
        lambda d: d.update(byteorder="big"),
        lambda d: d["globals"][0].update(verdict="maybe"),
        lambda d: d["storages"][0].update(source={"kind": "output", "key": "storage_0"}),  # no such output
    ],
)
def test_invalid_storages_and_headers_are_refused(edit: Any) -> None:
    doc = _doc(_tensor())
    edit(doc)
    with pytest.raises(SandboxError):
        _parse(doc)


def test_outputs_must_match_one_to_one() -> None:
    doc = _doc(_tensor(), source={"kind": "output", "key": "storage_0"})
    assert _parse(doc, outputs={"storage_0": 16}).storages[0].kind == "output"
    with pytest.raises(SandboxError):
        _parse(doc, outputs={"storage_0": 16, "storage_9": 4})
    with pytest.raises(SandboxError):
        _parse(doc, outputs={"storage_0": 8})


def test_depth_and_node_budgets() -> None:
    deep: dict[str, Any] = {"t": "none"}
    for _ in range(50):
        deep = {"t": "list", "items": [deep]}
    _parse(_doc(deep), input_size=64)
    with pytest.raises(SandboxError, match="deeper"):
        parse_manifest(json.dumps(_doc(deep)).encode(), input_size=64, outputs={}, max_depth=20)
    wide = {"t": "list", "items": [{"t": "none"}] * 100}
    with pytest.raises(SandboxError, match="nodes"):
        parse_manifest(json.dumps(_doc(wide)).encode(), input_size=64, outputs={}, max_nodes=50)


def test_not_json_is_refused() -> None:
    with pytest.raises(SandboxError):
        parse_manifest(b"\xff{", input_size=1, outputs={})
    with pytest.raises(SandboxError):
        parse_manifest(b"[" * 100_000, input_size=1, outputs={})


def test_cycles_through_mutable_values_rebuild_as_cycles() -> None:
    root = {"t": "list", "id": 0, "items": [{"t": "ref", "id": 0}]}
    out = build(_parse(_doc(root)), [torch.zeros(16, dtype=torch.uint8)], make_restore(None))
    assert out[0] is out


def _module_stub() -> Stub:
    w = torch.nn.Parameter(torch.ones(2, 2))
    child_state = {"_parameters": OrderedDict(weight=w, bias=None), "_buffers": OrderedDict(),
                   "_modules": OrderedDict(), "training": True}
    child = Stub("torch.nn.modules.linear", "Linear")
    object.__setattr__(child, "state", child_state)
    state = {
        "_parameters": OrderedDict(),
        "_buffers": OrderedDict(mean=torch.zeros(2), scratch=torch.ones(1)),
        "_non_persistent_buffers_set": {"scratch"},
        "_modules": OrderedDict(fc=child),
    }
    root = Stub("mypkg", "Net")
    object.__setattr__(root, "state", state)
    return root


def test_state_dict_walks_parameters_buffers_then_children() -> None:
    sd = state_dict(_module_stub())
    assert list(sd) == ["mean", "fc.weight"]
    assert not isinstance(sd["fc.weight"], torch.nn.Parameter)
    with pytest.raises(TypeError):
        state_dict({"not": "a module"})


def test_map_location_forms() -> None:
    s = torch.UntypedStorage(4)
    assert make_restore("cpu")(s, "cuda:0").device.type == "cpu"
    assert make_restore({"cuda:1": "cpu"})(s, "cuda:1").device.type == "cpu"
    assert make_restore(torch.device("cpu"))(s, "cuda:0").device.type == "cpu"
    seen: list[str] = []
    assert make_restore(lambda st, loc: seen.append(loc) or st)(s, "cpu") is s
    assert seen == ["cpu"]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            make_restore(None)(s, "cuda:0")
    with pytest.raises(TypeError):
        make_restore(3)  # type: ignore[arg-type]



def test_integer_parameters_cannot_require_grad() -> None:
    direct = {"t": "parameter", "data": _tensor(dtype="uint8"), "requires_grad": True}
    param = {"t": "parameter", "data": {"t": "ref", "id": 1}, "requires_grad": True}
    by_ref = {"t": "list", "id": 0, "items": [_tensor(dtype="uint8", id=1), param]}
    for root in (direct, by_ref):
        with pytest.raises(SandboxError, match="gradients"):
            _parse(_doc(root))


def test_unknown_device_names_are_a_sandbox_error() -> None:
    m = _parse(_doc({"t": "torch_device", "v": "nosuchdevice"}))
    with pytest.raises(SandboxError, match="device"):
        build(m, [torch.zeros(16, dtype=torch.uint8)], make_restore(None))


@pytest.mark.parametrize("fast", [True, False], ids=["fast-pass", "full-validator"])
def test_empty_tensor_whose_other_dimensions_overflow_is_refused(fast: bool) -> None:
    # numel is 0, but torch multiplies the non-zero dimensions out and overflows int64 building it.
    root = _tensor(shape=[2**61, 2**61, 0], stride=[0, 0, 0])
    if not fast:  # a node type the fast pass does not know sends the whole document to the full validator
        root = {"t": "list", "items": [root, {"t": "complex", "re": "0x0p+0", "im": "0x0p+0"}]}
    with pytest.raises(SandboxError, match="more elements"):
        _parse(_doc(root))


def test_manifest_built_to_exhaust_host_memory_is_refused_before_parsing() -> None:
    # ~25 bytes of Python object per byte of JSON: the bracket count is checked before json.loads runs.
    bomb = b'{"t": "list", "items": [' + b"{}," * 300_000 + b"{}]}"
    with pytest.raises(SandboxError, match="more than 1000 nodes"):
        parse_manifest(bomb, input_size=1, outputs={}, max_nodes=1000)


def test_typed_storage_node_is_aligned_like_its_dtype() -> None:
    # A complex128 storage at 8 mod 16 of the input crashes torch's kernels; it must be copied to an
    # aligned buffer even when only a storage node (no tensor view) names it.
    doc = _doc({"t": "storage", "storage": 0, "dtype": "complex128"}, nbytes=32,
               source={"kind": "input", "offset": 8, "length": 32})
    doc["storages"][0]["dtype"] = "complex128"
    m = _parse(doc)
    assert m.storages[0].align == 16


def test_state_dict_of_a_module_tree_that_shares_submodules_exponentially_is_refused() -> None:
    leaf = Stub("torch.nn.modules.linear", "Linear")
    object.__setattr__(leaf, "state", {"_parameters": {"w": torch.zeros(1)}, "_buffers": {}, "_modules": {}})
    node = leaf
    for _ in range(40):  # 2**40 paths to the leaf through 40 shared levels
        parent = Stub("torch.nn.modules.container", "Sequential")
        shared = {"_parameters": {}, "_buffers": {}, "_modules": {"a": node, "b": node}}
        object.__setattr__(parent, "state", shared)
        node = parent
    with pytest.raises(UnsafeContentError, match="submodule paths"):
        state_dict(node)
