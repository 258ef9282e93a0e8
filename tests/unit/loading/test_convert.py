"""safeload._loading.convert: pickle checkpoints become safetensors through the jail; shared storage
survives."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from safeload._loading.convert import (
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
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a file for people: the umask decides


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


def test_cached_conversions_are_readable_by_every_user_of_the_store(tmp_path: Path, policy: Policy) -> None:
    src = tmp_path / "w.pt"
    torch.save({"w": torch.randn(4)}, src)
    old = os.umask(0o077)
    try:
        out = cached_conversion(src, policy=policy)
    finally:
        os.umask(old)
    mode = lambda p: p.lstat().st_mode & 0o777  # noqa: E731
    assert mode(out) == 0o444 and mode(out.with_name(out.name + ".stat.json")) == 0o644
    assert mode(out.parent) == mode(out.parent.parent) == 0o755


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


def _tied_and_views() -> dict[str, torch.Tensor]:
    base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    emb = torch.randn(6, 4)
    return {
        "emb": emb, "head": emb, "base": base, "row": base[2], "tail": base.view(-1)[3:29],
        "cols": base[:, 1:3], "t": base.t(), "h": torch.randn(3, 3).half(), "empty": torch.empty(0),
    }


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_kernel_copy_writes_the_same_file_as_memory(tmp_path: Path, policy: Policy, zipped: bool) -> None:
    from safeload._loading.convert import _atomic_save, _load_mapped, _state_dict

    state = _tied_and_views()
    src = tmp_path / "w.pt"
    torch.save(state, src, _use_new_zipfile_serialization=zipped)
    data = src.read_bytes()
    with _load_mapped(src, policy, True) as (obj, mapped):
        assert mapped is not None  # storages are mapped from the verified file, not copied
        loaded, _ = _state_dict(obj, str(src))
        if zipped:
            # What the kernel copy relies on: a mapped tensor's bytes are the file's bytes at its offset.
            for name, t in loaded.items():
                if not t.is_contiguous() or not t.numel():
                    continue  # written from memory
                start = mapped.offset_of(t)
                assert start is not None, name
                assert data[start : start + t.nbytes] == t.view(torch.uint8).numpy().tobytes(), name
        _atomic_save(loaded, tmp_path / "copied.safetensors", {"k": "v"}, mapped)
        _atomic_save(loaded, tmp_path / "written.safetensors", {"k": "v"}, None)
    copied = (tmp_path / "copied.safetensors").read_bytes()
    assert copied == (tmp_path / "written.safetensors").read_bytes()
    got = load_file(tmp_path / "copied.safetensors")  # the safetensors library accepts the layout
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    header_len = int.from_bytes(copied[:8], "little")
    assert header_len % 8 == 0 and json.loads(copied[8 : 8 + header_len])["__metadata__"] == {"k": "v"}


def test_a_source_rewritten_during_conversion_is_refused(tmp_path: Path, policy: Policy) -> None:
    from safeload._loading.convert import _atomic_save, _load_mapped, _state_dict
    from safeload.errors import IntegrityError

    src = tmp_path / "w.pt"
    torch.save({"w": torch.randn(64, 64)}, src)
    dst = tmp_path / "out" / "w.safetensors"
    with _load_mapped(src, policy, True) as (obj, mapped):
        os.truncate(src, 128)  # someone cuts the verified file after the jail read it
        with pytest.raises(IntegrityError, match="shrank"):
            _atomic_save(_state_dict(obj, str(src))[0], dst, {}, mapped)
    assert not dst.exists() and list(dst.parent.iterdir()) == []  # no partial file is left behind


def test_a_safetensors_source_converts_as_itself(tmp_path: Path, policy: Policy) -> None:
    from safetensors.torch import save_file

    state = {"a": torch.randn(3, 4), "b": torch.arange(6)}
    save_file(state, tmp_path / "in.safetensors")
    got = load_file(convert_file(tmp_path / "in.safetensors", tmp_path / "out.safetensors", policy=policy))
    assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())


def test_an_unverified_source_is_filed_under_the_digest_of_the_bytes_converted(
    tmp_path: Path, policy: Policy
) -> None:
    import hashlib

    src = tmp_path / "w.pt"
    weights = torch.randn(8)
    torch.save({"w": weights}, src)
    out = cached_conversion(src, policy=policy)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert out.name == f"{digest}.safetensors"
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["safeload.source_sha256"] == digest
    assert torch.equal(load_file(out)["w"], weights)
    leftovers = [p.name for p in (policy.store / "converted").iterdir() if p.is_file()]
    assert leftovers == []  # the private copy is gone


def test_an_unverified_source_is_hashed_once_per_change(tmp_path: Path, policy: Policy) -> None:
    import time

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = tmp_path / "a" / "w.pt"
    torch.save({"w": torch.zeros(16)}, src)
    memo_dir = policy.store / "converted" / "by-path"
    first = cached_conversion(src, policy=policy)
    assert not memo_dir.exists()  # changed a moment ago: not remembered, hashed again next time
    time.sleep(1.1)
    assert cached_conversion(src, policy=policy) == first
    (memo,) = memo_dir.iterdir()
    assert json.loads(memo.read_text())["sha256"] == first.stem
    assert cached_conversion(src, policy=policy) == first
    # Other bytes of the same size, with the old mtime put back: the ctime still tells.
    torch.save({"w": torch.ones(16)}, tmp_path / "b" / "w.pt")
    other = (tmp_path / "b" / "w.pt").read_bytes()
    st = src.stat()
    assert len(other) == st.st_size
    src.write_bytes(other)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = cached_conversion(src, policy=policy)
    assert again != first and torch.equal(load_file(again)["w"], torch.ones(16))
