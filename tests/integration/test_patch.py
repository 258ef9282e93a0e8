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
        assert safeload.patching.is_patched()
        assert torch.equal(third_party_load(ckpt)["w"], torch.arange(3))  # type: ignore[index]
        with safeload.patch():  # nested use keeps the outer patch in place on exit
            pass
        assert torch.equal(third_party_load(ckpt)["w"], torch.arange(3))  # type: ignore[index]
    finally:
        safeload.unpatch()
    assert not safeload.patching.is_patched()
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
