"""Failures a real checkpoint runs into, each as a typed error whose message says what to do: a module
execute mode lacks, storages saved on a device this machine lacks, ``state_dict()`` on what is not a
module (and never a repr of a whole checkpoint in a message)."""

from __future__ import annotations

from pathlib import Path

import pytest

import safeload
from safeload.errors import DeviceUnavailableError, MissingModuleError, SafeloadError


@pytest.mark.parametrize(
    ("module", "pip"),
    [("omegaconf.dictconfig", "omegaconf"), ("sklearn_crfsuite.estimator", "sklearn_crfsuite"),
     ("sklearn.not_a_module", "scikit-learn")],
)
def test_execute_mode_names_the_missing_module(tmp_path: Path, module: str, pip: str) -> None:
    # What a Lightning checkpoint's hyper-parameters or a pickled CRF model reference.
    path = tmp_path / "needs.pkl"
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\nThing\n)\x81}U\x01aK\x01sb.")
    with pytest.raises(MissingModuleError) as info:
        safeload.load(path, unpickler="execute")
    exc = info.value
    assert isinstance(exc, ModuleNotFoundError) and isinstance(exc, SafeloadError)
    assert exc.name is not None and module.startswith(exc.name)
    message = str(exc)
    assert f"the checkpoint needs the module {exc.name}" in message
    assert f"pip install {pip}" in message and "inertly" in message
    # Inert loading (the default) needs nothing installed: the class is a stub.
    stub = safeload.load(path)
    assert isinstance(stub, safeload.Stub) and stub.qualname == f"{module}.Thing"
    assert stub.state == {"a": 1}


def _cuda_checkpoint(path: Path) -> None:
    """What ``torch.save`` writes on a GPU machine: every storage's location is ``cuda:0``."""
    import pickle
    import types

    import torch

    class CudaPickler(pickle._Pickler):  # type: ignore[name-defined,misc]
        def save_pers(self, pid: object) -> None:
            if isinstance(pid, tuple) and pid[0] == "storage":
                pid = (*pid[:3], "cuda:0", *pid[4:])
            super().save_pers(pid)

    mod = types.ModuleType("cuda_pickle")
    mod.Pickler = CudaPickler  # type: ignore[attr-defined]
    mod.dump = pickle.dump  # type: ignore[attr-defined]
    mod.__version__ = "1"  # type: ignore[attr-defined]
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}, path, pickle_module=mod)


def test_cuda_checkpoint_without_map_location_is_a_typed_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine can place CUDA storages")
    path = tmp_path / "gpu.pt"
    _cuda_checkpoint(path)
    for kwargs in ({}, {"map_location": "cuda"}):
        with pytest.raises(DeviceUnavailableError) as info:
            safeload.load(path, **kwargs)
        exc = info.value
        assert isinstance(exc, RuntimeError) and isinstance(exc, SafeloadError)
        message = str(exc)
        assert 'map_location="cpu"' in message and "cuda" in message
        assert "torch.cuda.is_available() is False" in message  # torch's own words are kept
    got = safeload.load(path, map_location="cpu")
    assert torch.equal(got["w"], torch.arange(6.0).reshape(2, 3)) and got["w"].device.type == "cpu"


def test_state_dict_of_torchscript_plain_dict_and_nested_checkpoint(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    expected = model.state_dict()
    script = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.script(model), str(script))
    archive = safeload.load(script)
    assert set(archive) == {"data", "constants"} and isinstance(archive["data"], safeload.Stub)
    for got in (safeload.state_dict(archive), safeload.state_dict(archive["data"])):
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)

    plain = tmp_path / "sd.pt"
    torch.save(expected, plain)
    got = safeload.state_dict(safeload.load(plain))
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)

    nested = tmp_path / "ckpt.pt"
    big = {f"w{i}": torch.zeros(64) for i in range(200)}
    torch.save({"epoch": 3, "state_dict": expected, "optimizer_states": [{"state": big}]}, nested)
    ckpt = safeload.load(nested)
    with pytest.raises(TypeError) as info:
        safeload.state_dict(ckpt)
    message = str(info.value)
    assert "safeload.state_dict(obj['state_dict'])" in message
    assert len(message) < 400 and "tensor(" not in message  # no repr of the checkpoint
    with pytest.raises(TypeError) as info:
        safeload.state_dict(list(range(100_000)))
    assert len(str(info.value)) < 400
