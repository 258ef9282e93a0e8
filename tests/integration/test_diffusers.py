"""``safeload.diffusers`` against plain diffusers on the same files: a tiny DDPM pipeline (UNet2DModel +
DDPMScheduler built from diffusers' own configs) from a directory registry and from the Hub-compatible
test server, denoised with a fixed seed; a model class with ``subfolder=``; a poisoned
``diffusion_pytorch_model.bin``; a ``model_index.json`` that would load repository code.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from safeload.errors import UntrustedSourceError
from tests.helpers.canary import Payload
from tests.helpers.trust import folder_pins, write_policy
from tests.integration.conftest import SessionHub

REPO = "acme/tiny-ddpm"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("diffusers") / "registry"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=10))
    pipe.save_pretrained(root / REPO)
    return root


def _denoise(pipe: diffusers.DiffusionPipeline) -> np.ndarray:
    out = pipe(batch_size=1, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np")
    return np.asarray(out.images)


def _policy(
    tmp_path: Path,
    registry: Path,
    monkeypatch: pytest.MonkeyPatch,
    hub: SessionHub | None = None,
    commit: str | None = None,
) -> None:
    if hub is not None:
        registries = {"hub": {"kind": "huggingface", "endpoint": hub.endpoint}}
        entry = {"registry": "hub", "repo": REPO, "revision": commit, "files": folder_pins(registry / REPO)}
    else:
        registries = {"local": {"kind": "directory", "path": str(registry)}}
        entry = {"registry": "local", "repo": REPO, "files": folder_pins(registry / REPO)}
    policy = write_policy(
        tmp_path / "trust.toml", store=tmp_path / "store", registries=registries, models={REPO: entry}
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))


@pytest.mark.parametrize("source", ["directory", "hub"])
def test_a_pipeline_denoises_as_plain_diffusers(
    source: str, tmp_path: Path, registry: Path, hub: SessionHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safeload.diffusers

    if source == "hub":
        files = {
            p.relative_to(registry / REPO).as_posix(): p.read_bytes()
            for p in (registry / REPO).rglob("*")
            if p.is_file()
        }
        _policy(tmp_path, registry, monkeypatch, hub, hub.add_repo(REPO, files))
    else:
        _policy(tmp_path, registry, monkeypatch)
    ours = safeload.diffusers.DiffusionPipeline.from_pretrained(REPO)
    plain = diffusers.DiffusionPipeline.from_pretrained(registry / REPO)
    assert type(ours) is diffusers.DDPMPipeline
    # The weights are compared exactly below; the outputs come from the same modules over tensors mapped at
    # other addresses, whose kernels may sum in another order.
    assert np.allclose(_denoise(ours), _denoise(plain), rtol=0, atol=1e-5)
    unet = safeload.diffusers.UNet2DModel.from_pretrained(REPO, subfolder="unet")
    assert all(
        torch.equal(a, b)
        for a, b in zip(unet.state_dict().values(), plain.unet.state_dict().values(), strict=True)
    )


def test_a_poisoned_unet_bin_loads_its_weights_and_runs_nothing(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    import safeload.diffusers

    canary = tmp_path / "canary"
    poisoned = tmp_path / "registry"
    shutil.copytree(registry, poisoned)
    unet = poisoned / REPO / "unet"
    state: dict[str, object] = dict(load_file(unet / "diffusion_pytorch_model.safetensors"))
    state["evil"] = Payload(canary)
    buf = io.BytesIO()
    torch.save(state, buf)
    (unet / "diffusion_pytorch_model.bin").write_bytes(buf.getvalue())
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    _policy(tmp_path, poisoned, monkeypatch)
    ours = safeload.diffusers.DiffusionPipeline.from_pretrained(REPO)
    plain = diffusers.DiffusionPipeline.from_pretrained(registry / REPO)
    assert np.allclose(_denoise(ours), _denoise(plain), rtol=0, atol=1e-5)
    assert not canary.exists(), "the pickle ran in the host"


@pytest.mark.parametrize(
    ("edit", "refusal"),
    [
        (lambda idx: idx.update(unet=["my_module", "MyUNet"]), "loads 'unet' from 'my_module'"),
        (lambda idx: idx.update(_class_name="EvilPipeline"), "names the pipeline 'EvilPipeline'"),
    ],
    ids=["component-library", "pipeline-class"],
)
def test_a_model_index_that_would_load_repository_code_is_refused(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, edit: object, refusal: str
) -> None:
    import safeload.diffusers

    other = tmp_path / "registry"
    shutil.copytree(registry, other)
    index_path = other / REPO / "model_index.json"
    index = json.loads(index_path.read_text())
    edit(index)  # type: ignore[operator]
    index_path.write_text(json.dumps(index))
    (other / REPO / "unet" / "my_module.py").write_text(f"open({str(tmp_path / 'canary')!r}, 'w')\n")
    _policy(tmp_path, other, monkeypatch)
    with pytest.raises(UntrustedSourceError, match=refusal):
        safeload.diffusers.DiffusionPipeline.from_pretrained(REPO)
    with pytest.raises(UntrustedSourceError, match="custom_pipeline= loads code"):
        safeload.diffusers.DiffusionPipeline.from_pretrained(REPO, custom_pipeline="anything")
    assert not (tmp_path / "canary").exists()


def _tiny_sd(root: Path) -> Path:
    """A Stable Diffusion pipeline small enough to run in a test: diffusers' UNet and VAE, transformers'
    CLIP text encoder and tokenizer, each in its own component folder."""
    import transformers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=77,
            projection_dim=16,
        )
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=transformers.CLIPTokenizer(model_max_length=77),
        unet=unet,
        scheduler=diffusers.DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "acme" / "tiny-sd")
    return root / "acme" / "tiny-sd"


def _to_bin(path: Path, canary: Path, bin_name: str) -> None:
    """Replace a safetensors file with a torch.save pickle of the same tensors plus a payload."""
    from safetensors.torch import load_file

    state: dict[str, object] = dict(load_file(path))
    state["evil"] = Payload(canary)
    buf = io.BytesIO()
    torch.save(state, buf)
    (path.parent / bin_name).write_bytes(buf.getvalue())
    path.unlink()


def test_a_stable_diffusion_pipeline_with_pickled_components_generates_as_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every component comes from the one entry: the text encoder's pytorch_model.bin (a transformers
    component) and the VAE's diffusion_pytorch_model.bin are converted in the jail; nothing runs."""
    import safeload.diffusers

    canary = tmp_path / "canary"
    clean = _tiny_sd(tmp_path / "clean")
    registry = tmp_path / "registry"
    shutil.copytree(tmp_path / "clean", registry)
    sd = registry / "acme" / "tiny-sd"
    _to_bin(sd / "text_encoder" / "model.safetensors", canary, "pytorch_model.bin")
    _to_bin(sd / "vae" / "diffusion_pytorch_model.safetensors", canary, "diffusion_pytorch_model.bin")
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": str(registry)}},
        models={"acme/tiny-sd": {"registry": "local", "repo": "acme/tiny-sd", "files": folder_pins(sd)}},
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))

    def generate(pipe: diffusers.DiffusionPipeline) -> np.ndarray:
        out = pipe(
            "a cat",
            num_inference_steps=2,
            height=16,
            width=16,
            generator=torch.manual_seed(0),
            output_type="np",
        )
        return np.asarray(out.images)

    ours = safeload.diffusers.DiffusionPipeline.from_pretrained("acme/tiny-sd")
    assert type(ours) is diffusers.StableDiffusionPipeline
    assert np.allclose(
        generate(ours), generate(diffusers.DiffusionPipeline.from_pretrained(clean)), rtol=0, atol=1e-5
    )
    assert not canary.exists(), "a pickle ran in the host"
