"""``safeload.load`` on benign but hard torch checkpoints, compared bit for bit with ``torch.load``.

Every artifact is built here; the reference results come from ``torch.load(weights_only=False)`` in one
throwaway subprocess (``tests/helpers/reference.py``), since the test process itself must never unpickle.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import safeload
from tests.helpers.reference import Described, assert_same, references
from tests.helpers.torch_tar import write_torch_tar

Builder = Callable[[], Any]


def _all_dtypes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 3, generator=g) * 10
    out = {str(dt): base.to(dt) for dt in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    )}
    out["uint16"] = torch.arange(5, dtype=torch.int32).to(torch.uint16)
    out["uint32"] = torch.arange(5, dtype=torch.int64).to(torch.uint32)
    out["uint64"] = torch.arange(5, dtype=torch.int64).to(torch.uint64)
    out["complex64"] = torch.complex(base, -base)
    out["complex128"] = torch.complex(base.double(), base.double() * 2)
    out["complex32"] = torch.complex(base.half(), base.half()).to(torch.complex32)
    out["nan_inf"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    return out


def _shapes() -> dict[str, Any]:
    return {
        "scalar": torch.tensor(3.5),
        "scalar_int": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0),
        "empty_2d": torch.empty(0, 3),
        "empty_3d": torch.zeros(2, 0, 4),
        "size": torch.Size([2, 3]),
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
    }


def _views() -> dict[str, Any]:
    a = torch.arange(24, dtype=torch.float32)
    m = a.view(4, 6)
    return {
        "a": a,
        "tail": a[1:],
        "again": a,
        "matrix": m,
        "transposed": m.t(),
        "strided": m[:, ::2],
        "column": m[:, 3],
        "expanded": torch.tensor([1.0, 2.0]).expand(3, 2),
        "offset_view": a[5:17].view(3, 4),
        "channels_last": torch.arange(120.0).reshape(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "tuple": (a[2:4], m[1]),
    }


def _parameters() -> dict[str, Any]:
    w = torch.nn.Parameter(torch.randn(3, 2, generator=torch.Generator().manual_seed(1)))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    leaf = torch.ones(3, requires_grad=True)
    return {"w": w, "frozen": frozen, "leaf": leaf, "w_again": w, "w_data": w.data[1:]}


class WithHiddenBuffer(torch.nn.Module):
    """A module with a non-persistent buffer, which ``state_dict()`` leaves out."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 4)
        self.register_buffer("kept", torch.arange(4.0))
        self.register_buffer("hidden", torch.ones(2), persistent=False)
        self.block = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2), torch.nn.ReLU())


def _module() -> Any:
    torch.manual_seed(2)
    return {"model": WithHiddenBuffer(), "epoch": 3}


def _optimizer() -> dict[str, Any]:
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "args": argparse.Namespace(lr=1e-3, name="run", layers=[3, 1], betas=(0.9, 0.999)),
        "epoch": 7,
        "rng": torch.get_rng_state(),
    }


def _plain_values() -> dict[str, Any]:
    shared_list = [1, 2]
    return {
        "ints": [0, -1, 2**31, -(2**63), 2**100],
        "floats": [0.1, -0.0, float("inf"), 1e300],
        "complex": 1 + 2j,
        "text": "héllo" * 20,
        "bytes": b"\x00\xff" * 40,
        "bytearray": bytearray(b"abc"),
        "empty_bytes": b"",
        "set": {1, 2, 3},
        "frozenset": frozenset({"a"}),
        "none": None,
        "bools": (True, False),
        "slice": slice(1, 10, 2),
        "nested": {"a": {"b": {"c": [shared_list, shared_list]}}},
        "odict": collections.OrderedDict([("z", 1), ("a", 2)]),
    }


def _numpy_inside() -> dict[str, Any]:
    return {
        "array": np.arange(12, dtype=np.float32).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "big_endian": np.arange(4, dtype=">i4"),
        "bools": np.array([True, False]),
        "complex": np.array([1 + 2j], dtype=np.complex64),
        "scalar_f": np.float64(1.5),
        "scalar_i": np.int16(-3),
        "dtype": np.dtype("<f2"),
        "zero_d": np.array(5.0),
        "objects": np.array([1, "a", None], dtype=object),
        "tensor": torch.ones(2),
    }


def _state_dict_metadata() -> Any:
    torch.manual_seed(4)
    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)).state_dict()


def _many() -> dict[str, torch.Tensor]:
    return {f"layer{i}.weight": torch.full((3,), float(i)) for i in range(10_000)}


_NOT_IN_LEGACY = {"torch.float8_e4m3fn", "torch.float8_e5m2", "uint16", "uint32", "uint64", "complex32"}

CASES: dict[str, Builder] = {
    "dtypes": _all_dtypes,
    "shapes": _shapes,
    "views": _views,
    "parameters": _parameters,
    "module": _module,
    "optimizer": _optimizer,
    "plain_values": _plain_values,
    "numpy_inside": _numpy_inside,
    "state_dict_metadata": _state_dict_metadata,
    "many_small_tensors": _many,
}


def _cuda_pickle_module() -> types.ModuleType:
    """A pickle module whose Pickler records every storage as saved on ``cuda:0``.

    This is how a checkpoint written on a GPU machine looks; this machine has no GPU to write one.
    """

    class CudaPickler(pickle._Pickler):  # type: ignore[name-defined,misc]
        def save_pers(self, pid: Any) -> None:
            if isinstance(pid, tuple) and pid[0] == "storage":
                pid = (*pid[:3], "cuda:0", *pid[4:])
            super().save_pers(pid)

    mod = types.ModuleType("cuda_pickle")
    mod.Pickler = CudaPickler  # type: ignore[attr-defined]
    mod.dump = pickle.dump  # type: ignore[attr-defined]
    mod.__version__ = "1"  # type: ignore[attr-defined]
    return mod


def _deflate(src: Path, dst: Path) -> None:
    """Rewrite a torch zip with every member deflated (torch itself only stores)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def _big_endian(src: Path, dst: Path) -> None:
    """Rewrite a torch zip to say its storages are big-endian (torch.load then swaps typed storages)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = b"big" if info.filename.endswith("/byteorder") else zin.read(info.filename)
            zout.writestr(info.filename, data)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Described]]:
    """Every case saved as zip and legacy files (plus CUDA-located and deflated variants), with references."""
    root = tmp_path_factory.mktemp("ckpt")
    paths: dict[str, tuple[Path, str | None]] = {}
    for name, build in CASES.items():
        obj = build()
        torch.save(obj, root / f"{name}.pt")
        paths[name] = (root / f"{name}.pt", None)
        if name != "many_small_tensors":
            if name == "dtypes":  # torch.load cannot read these dtypes back from a legacy file
                obj = {k: v for k, v in obj.items() if k not in _NOT_IN_LEGACY}
            torch.save(obj, root / f"{name}.legacy.pt", _use_new_zipfile_serialization=False)
            paths[f"{name}.legacy"] = (root / f"{name}.legacy.pt", None)
    for name in ("views", "parameters"):
        torch.save(CASES[name](), root / f"{name}.cuda.pt", pickle_module=_cuda_pickle_module())
        paths[f"{name}.cuda"] = (root / f"{name}.cuda.pt", "cpu")
        _deflate(root / f"{name}.pt", root / f"{name}.deflated.pt")
        paths[f"{name}.deflated"] = (root / f"{name}.deflated.pt", None)
    for name in ("dtypes", "views"):
        _big_endian(root / f"{name}.pt", root / f"{name}.big.pt")
        paths[f"{name}.big"] = (root / f"{name}.big.pt", None)
    write_torch_tar(root / "old.tar.pt")
    paths["legacy_tar"] = (root / "old.tar.pt", None)
    torch.save(CASES["views"](), root / "views.cuda_legacy.pt", pickle_module=_cuda_pickle_module(),
               _use_new_zipfile_serialization=False)
    paths["views.cuda_legacy"] = (root / "views.cuda_legacy.pt", "cpu")
    refs = references([(p, "torch", ml) for p, ml in paths.values()])
    return {name: (p, ref) for (name, (p, _)), ref in zip(paths.items(), refs)}


@pytest.mark.parametrize(
    "key", [*CASES, *(f"{name}.legacy" for name in CASES if name != "many_small_tensors")]
)
def test_matches_torch_load(artifacts: dict[str, tuple[Path, Described]], key: str) -> None:
    path, ref = artifacts[key]
    assert_same(safeload.load(path), ref)


@pytest.mark.parametrize(
    "case", ["views.deflated", "parameters.deflated", "dtypes.big", "views.big", "legacy_tar"]
)
def test_deflated_unaligned_big_endian_and_tar_layouts_match(
    artifacts: dict[str, tuple[Path, Described]], case: str
) -> None:
    path, ref = artifacts[case]
    assert_same(safeload.load(path), ref)


@pytest.mark.parametrize(
    "map_location",
    ["cpu", torch.device("cpu"), {"cuda:0": "cpu"}, lambda storage, location: storage],
    ids=["str", "device", "dict", "callable"],
)
@pytest.mark.parametrize("case", ["views.cuda", "parameters.cuda", "views.cuda_legacy"])
def test_cuda_storages_map_to_cpu(
    artifacts: dict[str, tuple[Path, Described]], case: str, map_location: Any
) -> None:
    path, ref = artifacts[case]
    assert_same(safeload.load(path, map_location=map_location), ref)


def test_cuda_storages_without_map_location_fail_like_torch(
    artifacts: dict[str, tuple[Path, Described]],
) -> None:
    path, _ = artifacts["views.cuda"]
    with pytest.raises(RuntimeError, match="CUDA"):
        safeload.load(path)


def test_map_location_callable_sees_each_storage_and_location(
    artifacts: dict[str, tuple[Path, Described]],
) -> None:
    path, _ = artifacts["views.cuda"]
    seen: list[tuple[int, str]] = []

    def record(storage: torch.UntypedStorage, location: str) -> None:
        seen.append((storage.nbytes(), location))

    with pytest.raises(RuntimeError, match="CUDA"):
        safeload.load(path, map_location=record)  # returning None falls back to the default placement
    assert seen and all(loc == "cuda:0" for _, loc in seen)


def test_aliasing_survives(artifacts: dict[str, tuple[Path, Described]]) -> None:
    path, _ = artifacts["views"]
    out = safeload.load(path)
    a, tail = out["a"], out["tail"]
    assert out["again"] is a
    assert tail.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    a[1] = 100.0  # writable (copy-on-write mapping), and the write shows through the view
    assert tail[0].item() == 100.0
    assert out["transposed"][1, 0].item() == 100.0


def test_writes_never_reach_the_file(artifacts: dict[str, tuple[Path, Described]]) -> None:
    path, _ = artifacts["views"]
    before = path.read_bytes()
    out = safeload.load(path)
    out["a"].fill_(-1.0)
    assert path.read_bytes() == before


def test_parameters_keep_requires_grad(artifacts: dict[str, tuple[Path, Described]]) -> None:
    out = safeload.load(artifacts["parameters"][0])
    assert isinstance(out["w"], torch.nn.Parameter) and out["w"].requires_grad
    assert isinstance(out["frozen"], torch.nn.Parameter) and not out["frozen"].requires_grad
    assert not isinstance(out["leaf"], torch.nn.Parameter) and out["leaf"].requires_grad
    assert out["w_again"] is out["w"]


def test_pickled_module_comes_back_as_stub_with_its_state_dict(
    artifacts: dict[str, tuple[Path, Described]],
) -> None:
    out = safeload.load(artifacts["module"][0])
    model = out["model"]
    assert isinstance(model, safeload.Stub)
    assert model.qualname == f"{WithHiddenBuffer.__module__}.WithHiddenBuffer"
    sd = safeload.state_dict(model)
    assert list(sd) == list(WithHiddenBuffer().state_dict())
    assert "hidden" not in sd


def test_weights_only_refuses_stubs_and_names_them(artifacts: dict[str, tuple[Path, Described]]) -> None:
    with pytest.raises(safeload.UnsafeContentError, match="WithHiddenBuffer"):
        safeload.load(artifacts["module"][0], weights_only=True)
    out = safeload.load(artifacts["optimizer"][0], weights_only=True)  # plain data only: allowed
    assert isinstance(out["args"], argparse.Namespace)


def test_file_objects_load_like_paths(artifacts: dict[str, tuple[Path, Described]]) -> None:
    path, ref = artifacts["views"]
    with open(path, "rb") as fh:
        assert_same(safeload.load(fh), ref)
    buf = io.BytesIO(b"junk" + path.read_bytes())
    buf.seek(4)  # like torch.load, reading starts at the current position
    assert_same(safeload.load(buf), ref)


def test_safetensors_is_loaded_directly(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "m.safetensors")
    out = safeload.load(tmp_path / "m.safetensors")
    expected = load_file(tmp_path / "m.safetensors")
    assert out.keys() == expected.keys()
    for k in out:
        assert out[k].dtype == expected[k].dtype and torch.equal(out[k], expected[k])


def test_torchscript_archive_yields_tensors_without_running_code(tmp_path: Path) -> None:
    torch.manual_seed(5)
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))
    torch.jit.save(module, tmp_path / "m.pt")
    out = safeload.load(tmp_path / "m.pt")
    sd = safeload.state_dict(out["data"])
    expected = module.state_dict()
    assert list(sd) == list(expected)
    for k in sd:
        assert torch.equal(sd[k], expected[k])


def test_inspect_names_tensors_and_shared_storages(artifacts: dict[str, tuple[Path, Described]]) -> None:
    from safeload._loading.inspect import inspect_artifact

    ins = inspect_artifact(artifacts["views"][0])
    assert ins.format == "torch_zip"
    table = {t.name: t for t in ins.tensors}
    assert table["a"].shape == (24,) and table["a"].nbytes == 96 and table["a"].dtype == "float32"
    assert "tail" in table["a"].shared_with and table["tail"].storage == table["a"].storage
    assert {g.verdict for g in ins.globals} == {"data"}
    module = inspect_artifact(artifacts["module"][0])
    assert "model.lin.weight" in {t.name for t in module.tensors}
    assert any(g.verdict == "stub" and g.name == "WithHiddenBuffer" for g in module.globals)


@pytest.mark.slow
def test_execute_unpickler_returns_the_same_result(artifacts: dict[str, tuple[Path, Described]]) -> None:
    path, ref = artifacts["views"]
    assert_same(safeload.load(path, unpickler="execute"), ref)
