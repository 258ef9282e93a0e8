"""``[files]`` pins through ``safeload.load``: a pinned path loads its verified store copy, or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import safeload
from safeload._trust.local_files import open_verified_local
from safeload._trust.store import Store
from safeload.errors import IntegrityError
from safeload.policy import load_policy
from tests.helpers.trust import sha256_of, write_policy


def _setup(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(4)}
    weights = tmp_path / "data" / "classifier.safetensors"
    weights.parent.mkdir()
    save_file(tensors, str(weights))
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        files={str(weights): sha256_of(weights)},
        audit_log=tmp_path / "audit.jsonl",
    )
    return weights, policy, tensors


def test_pinned_local_file_loads_from_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights, policy_path, tensors = _setup(tmp_path)
    policy = load_policy(policy_path)
    out = safeload.load(weights, policy=policy)
    assert set(out) == set(tensors) and all(out[k].equal(tensors[k]) for k in tensors)
    verified = open_verified_local(weights, policy)
    assert verified is not None and verified.digest == sha256_of(weights)
    assert verified.path == Store(tmp_path / "store").blob_path(verified.digest)
    assert verified.path.read_bytes() == weights.read_bytes()
    line = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])
    assert line["decision"] == "allow" and line["files"] == {str(weights): sha256_of(weights)}
    # A relative spelling of the same path is the same pin.
    monkeypatch.chdir(tmp_path)
    assert open_verified_local(Path("data/classifier.safetensors"), policy) == verified


def test_pinned_local_file_with_other_bytes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights, policy_path, _ = _setup(tmp_path)
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy_path))  # discovered, not passed
    safeload.load(weights)  # verified once, so the warm path has a record to trust...
    evil = {"w": torch.zeros(3, 4), "b": torch.ones(4)}
    save_file(evil, str(weights))  # ...and the file changes under the same name
    with pytest.raises(IntegrityError, match="expected sha256:"):
        safeload.load(weights)
    with pytest.raises(IntegrityError):
        safeload.load(str(weights))
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["decision"] for x in lines] == ["allow", "refuse", "refuse"]


def test_unpinned_local_file_loads_and_is_logged(tmp_path: Path) -> None:
    _, policy_path, _ = _setup(tmp_path)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.ones(2)}, str(other))
    out = safeload.load(other, policy=load_policy(policy_path))
    assert out["x"].equal(torch.ones(2))
    line = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert line["decision"] == "allow" and line["source"] == str(other) and "not pinned" in line["reason"]
