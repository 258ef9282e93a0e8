"""safeload.convert: pickle checkpoints become safetensors through the jail; shared storage survives."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from safeload.convert import (
    cached_conversion,
    convert_file,
    convert_sharded,
    converted_index,
    safetensors_name,
)
from safeload.errors import UnsafeContentError, UnsupportedFormatError
from safeload.policy import Policy
from tests.helpers import models as M


class _Payload:
    """Appends to a canary file if it is ever unpickled by a real unpickler."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (builtins.exec, (f"open({str(self.canary)!r}, 'a').write('ran')",))


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return Policy(store=tmp_path / "store")


def test_safetensors_names() -> None:
    assert safetensors_name("pytorch_model.bin") == "model.safetensors"
    assert safetensors_name("pytorch_model-00002-of-00003.bin") == "model-00002-of-00003.safetensors"
    assert safetensors_name("pytorch_model.fp16.bin") == "model.fp16.safetensors"
    assert safetensors_name("pytorch_model.bin.index.json") == "model.safetensors.index.json"
    assert safetensors_name("pytorch_model.bin.index.fp16.json") == "model.safetensors.index.fp16.json"


def test_tied_weights_convert_with_every_name(tmp_path: Path, policy: Policy) -> None:
    model = M.tiny_gpt2()
    M.save_model(model, tmp_path / "m", "bin")
    out = convert_file(tmp_path / "m" / "pytorch_model.bin", tmp_path / "model.safetensors", policy=policy)
    got = load_file(out)
    want = model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["format"] == "pt"
    assert not out.stat().st_mode & 0o222  # written read-only


def test_views_and_non_contiguous_tensors(tmp_path: Path, policy: Policy) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"base": base, "row": base[1], "t": base.t(), "tail": base.view(-1)[5:17], "alone": torch.ones(3)}
    torch.save(state, tmp_path / "views.pt")
    got = load_file(convert_file(tmp_path / "views.pt", tmp_path / "views.safetensors", policy=policy))
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_payload_entries_are_left_out_and_never_run(tmp_path: Path, policy: Policy) -> None:
    canary = tmp_path / "canary"
    state = {"w": torch.randn(3, 3), "evil": _Payload(canary)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    got = load_file(convert_file(tmp_path / "ckpt.pt", tmp_path / "out.safetensors", policy=policy))
    assert set(got) == {"w"}
    assert torch.equal(got["w"], state["w"])
    assert not canary.exists()
    with pytest.raises(UnsafeContentError):
        convert_file(tmp_path / "ckpt.pt", tmp_path / "strict.safetensors", policy=policy, weights_only=True)
    assert not canary.exists()


def test_not_a_state_dict(tmp_path: Path, policy: Policy) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UnsupportedFormatError, match="no state dict"):
        convert_file(tmp_path / "list.pt", tmp_path / "x.safetensors", policy=policy)


def test_sharded_checkpoint(tmp_path: Path, policy: Policy) -> None:
    model = M.tiny_bert()
    M.save_model(model, tmp_path / "m", "sharded_bin", shards=3)
    result = convert_sharded(tmp_path / "m" / "pytorch_model.bin.index.json", tmp_path / "out", policy=policy)
    assert result.index.name == "model.safetensors.index.json"
    index = json.loads(result.index.read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(result.shards)
    assert len(result.shards) == 3
    got: dict[str, torch.Tensor] = {}
    for path in result.shards.values():
        got.update(load_file(path))
    want = model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("shard", ["../evil.bin", "/etc/passwd", "sub/x.bin", "x.safetensors"])
def test_index_may_only_name_sibling_bins(tmp_path: Path, shard: str) -> None:
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(UnsafeContentError, match="not a plain"):
        converted_index(index)


def test_cached_by_source_sha256(tmp_path: Path, policy: Policy) -> None:
    src = tmp_path / "w.pt"
    torch.save({"w": torch.randn(4)}, src)
    first = cached_conversion(src, policy=policy)
    assert first.parent == policy.store / "converted" / "sha256"
    inode = first.stat().st_ino
    # The second call must not open the checkpoint again: the source is gone, the cache answers.
    digest = "sha256:" + first.stem
    src.unlink()
    again = cached_conversion(src, policy=policy, sha256=digest)
    assert again == first and again.stat().st_ino == inode


def test_dtypes_shapes_and_empty_tensors(tmp_path: Path, policy: Policy) -> None:
    state = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "i8": torch.randint(-100, 100, (4,), dtype=torch.int8),
        "i64": torch.arange(5),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
        "f8": torch.randn(6).to(torch.float8_e4m3fn),
    }
    torch.save(state, tmp_path / "dtypes.pt")
    got = load_file(convert_file(tmp_path / "dtypes.pt", tmp_path / "dtypes.safetensors", policy=policy))
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def test_a_swapped_cached_file_is_converted_again(tmp_path: Path, policy: Policy) -> None:
    src = tmp_path / "w.pt"
    weights = torch.randn(8)
    torch.save({"w": weights}, src)
    cached = cached_conversion(src, policy=policy)
    from safetensors.torch import save_file

    forged = tmp_path / "forged.safetensors"
    save_file({"w": torch.zeros(8)}, forged)
    os.replace(forged, cached)  # someone swaps the cached conversion for other weights
    again = cached_conversion(src, policy=policy)
    assert again == cached
    assert torch.equal(load_file(again)["w"], weights)
