"""The execute-mode worker's output, checked against the host's manifest validation.

The worker is run outside the jail, in one throwaway subprocess (it calls ``torch.load``, which the test
process never may), on benign files only: the jail's part is covered by ``tests/attacks``. Every manifest
it writes must pass ``safeload._loading.manifest.parse_manifest`` with the safetensors file it wrote.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from safeload._loading.manifest import parse_manifest

_REPO = Path(__file__).resolve().parents[3]
_DRIVER = (
    "import sys\n"
    "from safeload._sandbox.worker.execute import main\n"
    "for src, out in zip(sys.argv[1::2], sys.argv[2::2]):\n"
    "    print(main(['--mode', 'execute', '--in', src, '--out', out]))\n"
)


class _Plain:
    """An arbitrary class instance: becomes a stub with its ``__dict__`` as state."""

    def __init__(self) -> None:
        self.lr = 0.5
        self.tensor = torch.ones(2)


def _cases() -> dict[str, Any]:
    base = torch.arange(10, dtype=torch.float32)
    sd = torch.nn.Linear(2, 2).state_dict()
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    storage_alone = torch.arange(4, dtype=torch.int16).untyped_storage()
    return {
        "views": {
            "a": base, "b": base[2:6].view(2, 2), "t": base.view(2, 5).t(), "p": torch.nn.Parameter(base)
        },
        "state_dict": sd,  # an OrderedDict with _metadata
        "module": {"m": torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())},
        "values": {
            "none": None, "big": 1 << 100, "f": float("nan"), "c": 1 + 2j, "s": "x", "b": b"\x00",
            "ba": bytearray(b"y"), "set": {1, 2}, "fs": frozenset({3}), "sl": slice(1, None, 2),
            "ns": argparse.Namespace(lr=0.1), "od": collections.OrderedDict(a=1), "tuple": (1, (2,)),
            "dtype": torch.bfloat16, "size": torch.Size([1, 2]), "device": torch.device("cpu"),
            "cyclic": cyclic, "np": np.arange(6, dtype=">i2").reshape(2, 3),
            "npf": np.ones((2, 2), order="F"), "scalar": np.float16(1.5), "npdtype": np.dtype("<u4"),
            "objarr": np.array([1, "a"], dtype=object),
            "storage": storage_alone, "empty": torch.empty(0, 3), "zero_d": torch.tensor(7),
            "datetime": np.array(["2020-01-01"], dtype="datetime64[D]"),
        },
        "class_instance": {"obj": _Plain(), "cls": _Plain, "fn": _cases},
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("execute-worker")
    args: list[str] = []
    outs: dict[str, Path] = {}
    for name, obj in _cases().items():
        src = root / f"{name}.pt"
        torch.save(obj, src)
        outs[name] = root / f"{name}.out"
        outs[name].mkdir()
        args += [str(src), str(outs[name])]
    torch.manual_seed(3)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU()))
    torch.jit.save(scripted, root / "ts.pt")
    outs["torchscript"] = root / "torchscript.out"
    outs["torchscript"].mkdir()
    args += [str(root / "ts.pt"), str(outs["torchscript"])]
    np.save(root / "plain.npy", np.arange(5.0))
    outs["npy"] = root / "npy.out"
    outs["npy"].mkdir()
    (root / "garbage").write_bytes(b"\x00not a checkpoint")
    outs["garbage"] = root / "garbage.out"
    outs["garbage"].mkdir()
    args += [str(root / "plain.npy"), str(outs["npy"]), str(root / "garbage"), str(outs["garbage"])]
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, *args], cwd=_REPO, capture_output=True, text=True, timeout=300,
        check=False, env={**os.environ, "PYTHONPATH": str(_REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return outs


def _validated(out: Path, src: Path) -> Any:
    raw = (out / "manifest.json").read_bytes()
    sizes: dict[str, int] = {}
    if (out / "tensors.safetensors").exists():
        with safe_open(str(out / "tensors.safetensors"), framework="np") as fh:
            for key in fh.keys():
                sizes[key] = int(fh.get_slice(key).get_shape()[0])
    return parse_manifest(raw, input_size=src.stat().st_size, outputs=sizes)


@pytest.mark.parametrize("name", [*_cases(), "npy"])
def test_manifest_passes_host_validation(outputs: dict[str, Path], name: str) -> None:
    src = outputs[name].parent / (f"{name}.pt" if name != "npy" else "plain.npy")
    manifest = _validated(outputs[name], src)
    assert manifest.format in ("torch_zip", "npy")


_ITEMSIZE = {"float64": 8, "int64": 8, "complex128": 8, "complex64": 8, "uint64": 8, "float32": 4,
             "int32": 4, "uint32": 4, "complex32": 4, "float16": 2, "bfloat16": 2, "int16": 2, "uint16": 2}


@pytest.mark.parametrize("name", ["views", "values", "state_dict", "npy"])
def test_storages_start_aligned_in_the_safetensors_file(outputs: dict[str, Path], name: str) -> None:
    # An aligned storage is used in place by the host; a misaligned one costs a copy.
    doc = json.loads((outputs[name] / "manifest.json").read_text())
    raw = (outputs[name] / "tensors.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert (8 + header_len) % 8 == 0
    for spec in doc["storages"]:
        start = header[spec["source"]["key"]]["data_offsets"][0]
        assert start % _ITEMSIZE.get(spec["dtype"], 1) == 0, spec


def test_manifest_lists_the_stream_globals_with_verdicts(outputs: dict[str, Path]) -> None:
    doc = json.loads((outputs["module"] / "manifest.json").read_text())
    verdicts = {(g["module"], g["name"]): g["verdict"] for g in doc["globals"]}
    assert verdicts[("torch._utils", "_rebuild_tensor_v2")] == "data"
    assert verdicts[("torch.nn.modules.linear", "Linear")] == "stub"


def test_module_becomes_stub_with_its_dict_as_state(outputs: dict[str, Path]) -> None:
    doc = json.loads((outputs["module"] / "manifest.json").read_text())
    stub = doc["root"]["items"][0][1]
    assert (stub["t"], stub["module"], stub["name"]) == ("stub", "torch.nn.modules.container", "Sequential")
    state_keys = {k["v"] for k, _ in stub["state"]["items"]}
    assert {"_parameters", "_buffers", "_modules", "training"} <= state_keys


def test_views_share_one_storage(outputs: dict[str, Path]) -> None:
    doc = json.loads((outputs["views"] / "manifest.json").read_text())
    assert len(doc["storages"]) == 1
    nodes = dict((k["v"], v) for k, v in doc["root"]["items"])
    assert nodes["b"]["offset"] == 2 and nodes["t"]["stride"] == [1, 5]
    assert nodes["p"]["t"] == "parameter" and nodes["p"]["data"]["storage"] == 0


def test_torchscript_becomes_stubs_holding_parameters(outputs: dict[str, Path]) -> None:
    manifest = _validated(outputs["torchscript"], outputs["torchscript"].parent / "ts.pt")
    assert manifest.format == "torchscript"
    doc = json.loads((outputs["torchscript"] / "manifest.json").read_text())
    root = doc["root"]
    assert (root["t"], root["name"]) == ("stub", "Sequential")
    modules = dict((k["v"], v) for k, v in root["state"]["items"])["_modules"]
    linear = modules["items"][0][1]
    params = dict((k["v"], v) for k, v in linear["state"]["items"])["_parameters"]
    assert [k["v"] for k, _ in params["items"]] == ["weight", "bias"]
    assert len(doc["storages"]) == 2


def test_unknown_format_is_reported_as_a_format_error(outputs: dict[str, Path]) -> None:
    err = json.loads((outputs["garbage"] / "error.json").read_text())
    assert err["kind"] == "format"
    assert not (outputs["garbage"] / "manifest.json").exists()
