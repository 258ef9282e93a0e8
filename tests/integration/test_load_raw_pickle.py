"""``safeload.load`` on plain ``pickle.dump`` output holding tensors, bit for bit against ``pickle.load``.

``pickle.dump`` (not ``torch.save``) writes each storage as ``torch.storage._load_from_bytes(b)``, where
``b`` is a whole ``torch.save`` file of that storage. The inert worker reads ``b`` with its own strict
readers; when ``b`` sits verbatim in the outer file (protocol 3+ BINBYTES) the storage is referenced in
place, otherwise (protocol 2's latin-1 strings) its bytes travel in ``tensors.safetensors``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import safeload
from tests.helpers.reference import Described, assert_same, references

_REPO = Path(__file__).resolve().parents[2]


def _state_dict() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {
        "w": torch.randn(3, 5, generator=g),
        "h": torch.randn(4, generator=g).half(),
        "bf": torch.randn(6, generator=g).bfloat16(),
        "i8": torch.arange(-5, 5, dtype=torch.int8),
        "i64": torch.arange(9, dtype=torch.int64).reshape(3, 3),
        "mask": torch.tensor([True, False, True]),
        "c": torch.randn(2, 2, dtype=torch.complex64, generator=g),
        "d": torch.randn(3, dtype=torch.float64, generator=g),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
    }


def _views() -> dict[str, Any]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {"base": base, "row": base[1], "col": base[:, 2], "t": base.t(), "strided": base[::2, 1::3],
            "again": base, "list": [base, base[2:]]}


def _parameters() -> dict[str, Any]:
    w = torch.nn.Parameter(torch.linspace(-1, 1, 12).reshape(3, 4))
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    return {"w": w, "frozen": frozen, "same": w, "plain": torch.zeros(2)}


CASES: dict[str, Callable[[], Any]] = {"state_dict": _state_dict, "views": _views, "parameters": _parameters}
PROTOCOLS = (2, 4, 5)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Described]]:
    root = tmp_path_factory.mktemp("rawpkl")
    paths: dict[str, Path] = {}
    for name, build in CASES.items():
        for proto in PROTOCOLS:
            path = root / f"{name}.p{proto}.pkl"
            with open(path, "wb") as fh:
                pickle.dump(build(), fh, protocol=proto)
            paths[f"{name}.p{proto}"] = path
    refs = references([(p, "pickle", None) for p in paths.values()])
    return {key: (p, ref) for (key, p), ref in zip(paths.items(), refs, strict=True)}


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_pickle_load(artifacts: dict[str, tuple[Path, Described]], case: str, proto: int) -> None:
    path, ref = artifacts[f"{case}.p{proto}"]
    result = safeload.load(path, weights_only=True)
    assert_same(result, ref)


def test_parameters_keep_their_type_and_flags(artifacts: dict[str, tuple[Path, Described]]) -> None:
    result = safeload.load(artifacts["parameters.p4"][0])
    assert isinstance(result["w"], torch.nn.Parameter) and result["w"].requires_grad
    assert isinstance(result["frozen"], torch.nn.Parameter) and not result["frozen"].requires_grad
    assert result["same"] is result["w"]


def _worker_manifest(path: Path, out: Path) -> dict[str, Any]:
    """The manifest the inert worker writes for ``path`` (run outside the jail: the file is benign)."""
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "safeload._sandbox.worker", "--mode", "inert", "--max-output", str(1 << 30),
         "--in", str(path), "--out", str(out)],
        cwd=_REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def test_large_storage_is_referenced_in_place_and_manifest_stays_small(tmp_path: Path) -> None:
    big = torch.arange(4 << 20, dtype=torch.float32)  # 16 MiB
    path = tmp_path / "big.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"big": big, "view": big[5:9]}, fh)
    out = tmp_path / "out"
    manifest = _worker_manifest(path, out)
    assert (out / "manifest.json").stat().st_size < 4096
    assert not (out / "tensors.safetensors").exists()
    assert {s["source"]["kind"] for s in manifest["storages"]} == {"input"}
    raw = path.read_bytes()
    # pickle.load gives every tensor its own copy of the storage, so the view carries the whole storage too.
    assert [s["nbytes"] for s in manifest["storages"]] == [big.nbytes, big.nbytes]
    for spec in manifest["storages"]:
        src = spec["source"]
        assert raw[src["offset"] : src["offset"] + src["length"]] == big.numpy().tobytes()
    result = safeload.load(path)
    assert torch.equal(result["big"], big) and torch.equal(result["view"], big[5:9])


def test_protocol_2_storages_travel_in_the_output_file(tmp_path: Path) -> None:
    path = tmp_path / "p2.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"w": torch.arange(1000, dtype=torch.float32)}, fh, protocol=2)
    out = tmp_path / "out"
    manifest = _worker_manifest(path, out)
    assert [s["source"]["kind"] for s in manifest["storages"]] == ["output"]
    assert os.path.getsize(out / "manifest.json") < 4096


def test_nested_zip_storage_is_read_in_place(tmp_path: Path) -> None:
    """A storage whose embedded bytes are a torch zip (as other torch versions write) maps in place."""
    t = torch.arange(100, dtype=torch.float32)
    buf = io.BytesIO()
    torch.save(t.untyped_storage(), buf)
    nested = buf.getvalue()
    # Outer pickle: {"s": torch.storage._load_from_bytes(<zip bytes>)}, protocol 4.
    body = (b"\x80\x04}\x8c\x01s\x8c\rtorch.storage\x8c\x10_load_from_bytes\x93B"
            + len(nested).to_bytes(4, "little") + nested + b"\x85Rs.")
    path = tmp_path / "zip_storage.pkl"
    path.write_bytes(body)
    manifest = _worker_manifest(path, tmp_path / "out")
    (storage,) = manifest["storages"]
    assert storage["source"]["kind"] == "input" and storage["nbytes"] == t.nbytes
    assert body[storage["source"]["offset"] :][: t.nbytes] == t.numpy().tobytes()
    result = safeload.load(path)
    assert bytes(result["s"].tolist()) == t.numpy().tobytes()
