"""safeload.patch(): third-party torch.load and from_pretrained calls go through safeload, and come back.

The "third-party" code here is written the way libraries write it: it calls ``torch.load`` through the
``torch`` module at call time and knows nothing about safeload.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

import safeload
from safeload.errors import UntrustedSourceError
from tests.helpers import models  # noqa: F401  (imports torch._dynamo before the host guard is set)


class _Payload:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (builtins.exec, (f"open({str(self.canary)!r}, 'a').write('ran')",))


def third_party_load(path: Path) -> object:
    """What a library that cannot change its imports does."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _loader_descriptors() -> dict[tuple[type, str], object]:
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    out: dict[tuple[type, str], object] = {}
    for cls in (
        transformers.PreTrainedModel,
        _BaseAutoModelClass,
        transformers.AutoModelForCausalLM,
        transformers.AutoTokenizer,
        transformers.AutoConfig,
        transformers.PreTrainedTokenizerBase,
    ):
        out[(cls, "from_pretrained")] = cls.__dict__["from_pretrained"]
    return out


def _snapshot() -> tuple[object, ...]:
    import torch.serialization
    import transformers
    import transformers.pipelines

    return (
        torch.load,
        torch.serialization.load,
        transformers.pipeline,
        transformers.pipelines.pipeline,
        *_loader_descriptors().values(),
    )


def test_torch_load_in_third_party_code_runs_in_the_jail(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    weights = torch.randn(4, 4)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"weights": weights, "hook": _Payload(canary)}, ckpt)
    before = _snapshot()
    with safeload.patch():
        assert torch.load is not before[0]
        out = third_party_load(ckpt)
    assert isinstance(out, dict)
    assert torch.equal(out["weights"], weights)
    assert isinstance(out["hook"], safeload.Stub)
    assert not canary.exists()
    after = _snapshot()
    assert all(a is b for a, b in zip(after, before, strict=True))


def test_patch_stays_until_unpatch(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"w": torch.arange(3)}, ckpt)
    before = _snapshot()
    safeload.patch()
    try:
        assert safeload._patching.is_patched()
        assert torch.equal(third_party_load(ckpt)["w"], torch.arange(3))  # type: ignore[index]
        with safeload.patch():  # nested use keeps the outer patch in place on exit
            pass
        assert torch.equal(third_party_load(ckpt)["w"], torch.arange(3))  # type: ignore[index]
    finally:
        safeload.unpatch()
    assert not safeload._patching.is_patched()
    assert all(a is b for a, b in zip(_snapshot(), before, strict=True))
    # Unpatched, the suite's own guard answers again: the host would have unpickled.
    with pytest.raises(AssertionError, match=r"torch\.load was called in the host"):
        third_party_load(ckpt)


def test_patched_from_pretrained_refuses_unpinned_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    policy = tmp_path / "trust.toml"
    policy.write_text(f'version = 1\nstore = "{tmp_path / "store"}"\n')
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))
    with safeload.patch():
        with pytest.raises(UntrustedSourceError, match="safeload pin"):
            transformers.AutoModel.from_pretrained("someone/not-pinned")
        with pytest.raises(UntrustedSourceError):
            transformers.AutoTokenizer.from_pretrained("someone/not-pinned")
        with pytest.raises(UntrustedSourceError):
            transformers.pipeline("feature-extraction", model="someone/not-pinned")


# --- huggingface_hub's download entry points -------------------------------------------------------

_THIRD_PARTY = """
from huggingface_hub import hf_hub_download, snapshot_download


def fetch_snapshot(repo_id):
    return snapshot_download(repo_id)


def fetch_file(repo_id, filename):
    return hf_hub_download(repo_id, filename)
"""


def _hub_snapshot() -> dict[tuple[str, str], object]:
    import sys

    import huggingface_hub
    import huggingface_hub._snapshot_download
    import huggingface_hub.file_download

    out: dict[tuple[str, str], object] = {}
    for name, module in list(sys.modules.items()):
        for attr in ("hf_hub_download", "snapshot_download", "try_to_load_from_cache"):
            value = getattr(module, "__dict__", {}).get(attr)
            if value is not None:
                out[(name, attr)] = value
    out[("HfApi", "hf_hub_download")] = huggingface_hub.HfApi.__dict__["hf_hub_download"]
    out[("HfApi", "snapshot_download")] = huggingface_hub.HfApi.__dict__["snapshot_download"]
    return out


@pytest.fixture
def pinned_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A policy pinning one model from a directory registry; HF_ENDPOINT points at a loopback listener
    that counts every connection (the public-Hub fallback, if anything fell back)."""
    import hashlib

    from tests.helpers.canary import Listener
    from tests.helpers.trust import write_policy

    model = tmp_path / "registry" / "acme" / "pinned"
    model.mkdir(parents=True)
    (model / "config.json").write_bytes(b'{"model_type": "bert"}')
    listener = Listener()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.port}")
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": str(tmp_path / "registry")}},
        models={
            "acme/pinned": {
                "registry": "local",
                "repo": "acme/pinned",
                "files": {"config.json": "sha256:" + hashlib.sha256(b'{"model_type": "bert"}').hexdigest()},
            }
        },
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))
    yield listener  # type: ignore[misc]
    listener.close()


def test_hub_downloads_in_third_party_code_resolve_through_the_policy(
    tmp_path: Path, pinned_hub: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib
    import sys

    import huggingface_hub
    import transformers.utils.hub

    listener = pinned_hub
    (tmp_path / "thirdparty_before.py").write_text(_THIRD_PARTY)
    (tmp_path / "thirdparty_after.py").write_text(_THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    before_module = importlib.import_module("thirdparty_before")  # bound the originals by name
    original = _hub_snapshot()
    try:
        with safeload.patch():
            after_module = importlib.import_module("thirdparty_after")  # binds while patched
            for module in (before_module, after_module):
                folder = Path(module.fetch_snapshot("acme/pinned"))
                assert folder.is_relative_to(tmp_path / "store")
                assert (
                    Path(module.fetch_file("acme/pinned", "config.json")).read_bytes()
                    == b'{"model_type": "bert"}'
                )
                with pytest.raises(UntrustedSourceError, match=r"not in the policy's \[models\]"):
                    module.fetch_snapshot("org/unpinned")
                with pytest.raises(UntrustedSourceError):
                    module.fetch_file("org/unpinned", "config.json")
            with pytest.raises(UntrustedSourceError):
                huggingface_hub.HfApi().snapshot_download("org/unpinned")
            with pytest.raises(UntrustedSourceError):
                transformers.utils.hub.hf_hub_download("org/unpinned", "config.json")
            assert huggingface_hub.try_to_load_from_cache("acme/pinned", "config.json") is None
        assert listener.connections == 0, "something reached the public-Hub endpoint"  # type: ignore[attr-defined]
        now = _hub_snapshot()
        assert {k: v for k, v in now.items() if k in original} == original, "unpatch left a replacement"
        assert (
            after_module.snapshot_download
            is original[("huggingface_hub._snapshot_download", "snapshot_download")]
        )
    finally:
        sys.modules.pop("thirdparty_before", None)
        sys.modules.pop("thirdparty_after", None)
