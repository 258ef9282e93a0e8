"""``safeload.peft.PeftModel`` against plain peft on the same files: a LoRA adapter built with peft's own
``LoraConfig`` on a tiny BERT, pinned as its own ``[models]`` entry and served by a directory registry
and by the Hub-compatible test server; a poisoned ``adapter_model.bin``; an adapter made for a base the
policy does not know.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import peft
import pytest
import torch
import transformers

from safeload.errors import UntrustedSourceError
from tests.helpers.canary import Payload
from tests.helpers.hubserver import tiny_bert_files
from tests.helpers.trust import folder_pins, write_policy
from tests.integration.conftest import SessionHub

IDS = torch.tensor([[101, 7592, 2088, 2003, 102]])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """acme/tiny-bert (the base) and acme/tiny-lora (a LoRA on query/value with random weights)."""
    root = tmp_path_factory.mktemp("peft") / "registry"
    base_dir = root / "acme" / "tiny-bert"
    base_dir.mkdir(parents=True)
    for name, data in tiny_bert_files().items():
        (base_dir / name).write_bytes(data)
    base = transformers.AutoModel.from_pretrained(base_dir)
    torch.manual_seed(1)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    adapted = peft.get_peft_model(base, lora)
    adapted.save_pretrained(root / "acme" / "tiny-lora")
    config_path = root / "acme" / "tiny-lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "acme/tiny-bert"
    config_path.write_text(json.dumps(config))
    return root


def _policy(tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, **hub: object) -> None:
    models = {
        repo: {"registry": "local", "repo": repo, "files": folder_pins(registry / repo)}
        for repo in ("acme/tiny-bert", "acme/tiny-lora")
    }
    registries: dict[str, object] = {"local": {"kind": "directory", "path": str(registry)}}
    if hub:
        registries["hub"] = {"kind": "huggingface", "endpoint": hub["endpoint"]}
        models["acme/tiny-lora"] = {
            "registry": "hub",
            "repo": "acme/tiny-lora",
            "revision": hub["commit"],
            "files": folder_pins(registry / "acme" / "tiny-lora"),
        }
    policy = write_policy(
        tmp_path / "trust.toml", store=tmp_path / "store", registries=registries, models=models
    )  # type: ignore[arg-type]
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))


def _plain(registry: Path) -> torch.Tensor:
    base = transformers.AutoModel.from_pretrained(registry / "acme" / "tiny-bert")
    model = peft.PeftModel.from_pretrained(base, str(registry / "acme" / "tiny-lora")).eval()
    with torch.no_grad():
        return model(IDS).last_hidden_state


def _ours() -> tuple[torch.Tensor, torch.Tensor]:
    import safeload.peft
    import safeload.transformers

    base = safeload.transformers.AutoModel.from_pretrained("acme/tiny-bert")
    model = safeload.peft.PeftModel.from_pretrained(base, "acme/tiny-lora").eval()
    with torch.no_grad():
        adapted = model(IDS).last_hidden_state
        merged = model.merge_and_unload()(IDS).last_hidden_state
    return adapted, merged


@pytest.mark.parametrize("source", ["directory", "hub"])
def test_an_adapter_applies_as_with_plain_peft(
    source: str, tmp_path: Path, registry: Path, hub: SessionHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "hub":
        lora = registry / "acme" / "tiny-lora"
        commit = hub.add_repo("acme/tiny-lora", {p.name: p.read_bytes() for p in lora.iterdir()})
        _policy(tmp_path, registry, monkeypatch, endpoint=hub.endpoint, commit=commit)
    else:
        _policy(tmp_path, registry, monkeypatch)
    want = _plain(registry)
    adapted, merged = _ours()
    assert torch.equal(adapted, want)
    assert torch.allclose(merged, want, atol=1e-5)
    with torch.no_grad():
        bare = transformers.AutoModel.from_pretrained(registry / "acme" / "tiny-bert")(IDS).last_hidden_state
    assert not torch.allclose(bare, want), "the adapter changes nothing, so equality proves nothing"


def test_a_poisoned_adapter_bin_loads_its_weights_and_runs_nothing(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    canary = tmp_path / "canary"
    poisoned = tmp_path / "registry"
    shutil.copytree(registry, poisoned)
    lora = poisoned / "acme" / "tiny-lora"
    state: dict[str, object] = dict(load_file(lora / "adapter_model.safetensors"))
    state["evil"] = Payload(canary)
    buf = io.BytesIO()
    torch.save(state, buf)
    (lora / "adapter_model.bin").write_bytes(buf.getvalue())
    (lora / "adapter_model.safetensors").unlink()
    _policy(tmp_path, poisoned, monkeypatch)
    adapted, _ = _ours()
    assert torch.equal(adapted, _plain(registry))
    assert not canary.exists(), "the pickle ran in the host"


def test_an_adapter_for_a_base_the_policy_does_not_know_is_refused(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "registry"
    shutil.copytree(registry, other)
    config_path = other / "acme" / "tiny-lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "someone/else"
    config_path.write_text(json.dumps(config))
    _policy(tmp_path, other, monkeypatch)
    import safeload.peft
    import safeload.transformers

    base = safeload.transformers.AutoModel.from_pretrained("acme/tiny-bert")
    with pytest.raises(
        UntrustedSourceError, match="made for 'someone/else', which is not a \\[models\\] entry"
    ):
        safeload.peft.PeftModel.from_pretrained(base, "acme/tiny-lora")
    with pytest.raises(UntrustedSourceError, match="not in the policy"):
        safeload.peft.PeftModel.from_pretrained(base, "acme/unpinned-lora")
