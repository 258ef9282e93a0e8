"""``safeload convert`` on the layouts real checkpoints use, run as a command line on real files.

A state dict nested under a key (``{"model": {"state_dict": ...}}``, Lightning's ``state_dict``), a numpy
``.npz`` archive of named arrays, the positional output (``convert IN OUT``), the non-tensor siblings
that are left out being listed, and outputs following the umask.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from tests.integration.test_cli import SAFELOAD_CMD, as_json, cli


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_nested_state_dict_needs_key_and_lists_what_is_left_out(tmp_path: Path) -> None:
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    src = tmp_path / "train.pt"
    torch.save({"model": {"state_dict": sd, "epoch": 3}, "config_dict": {"lr": 0.1}}, src)
    out = tmp_path / "weights.safetensors"

    refused = cli("convert", src, out)
    assert refused.returncode == 2
    assert "--key model.state_dict" in refused.stderr and "Traceback" not in refused.stderr
    assert not out.exists()

    wrong = cli("convert", src, out, "--key", "model.weights")
    assert wrong.returncode == 2 and "'model' has no key 'weights'" in wrong.stderr
    assert "epoch, state_dict" in wrong.stderr

    proc = cli("convert", src, out, "--key", "model.state_dict")
    assert proc.returncode == 0, proc.stderr
    assert "left out (not tensors): config_dict, model.epoch" in proc.stdout
    got = _tensors(out)
    assert set(got) == {"w", "b"}
    for k, v in sd.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype

    report = as_json(cli("convert", src, "-o", out, "--key", "model.state_dict", "--force", "--json"))
    assert report["files"][0]["left_out"] == ["config_dict", "model.epoch"]
    assert report["files"][0]["tensors"] == 2


def test_lightning_layout_unwraps_state_dict_and_lists_siblings(tmp_path: Path) -> None:
    src = tmp_path / "epoch=3.ckpt"
    sd = {"layer.weight": torch.randn(4, 4), "layer.bias": torch.randn(4)}
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": sd,
            "optimizer_states": [{"state": {}}],
            "hyper_parameters": {"hidden": 4},
        },
        src,
    )
    out = tmp_path / "w.safetensors"
    report = as_json(cli("convert", src, out, "--json"))
    left = report["files"][0]["left_out"]
    assert set(left) == {
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "optimizer_states",
        "hyper_parameters",
    }
    got = _tensors(out)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    # The same with the key named explicitly.
    again = cli("convert", src, tmp_path / "w2.safetensors", "--key", "state_dict")
    assert again.returncode == 0, again.stderr
    assert set(_tensors(tmp_path / "w2.safetensors")) == set(sd)


def test_npz_archive_of_named_arrays(tmp_path: Path) -> None:
    arrays = {
        "embed": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ids": np.array([5, 6, 7], dtype=np.int64),
        "half": np.ones(2, dtype=np.float16),
        "mask": np.array([True, False]),
    }
    src = tmp_path / "arrays.npz"
    np.savez(src, **arrays)  # type: ignore[arg-type]
    out = tmp_path / "arrays.safetensors"
    proc = cli("convert", src, out)
    assert proc.returncode == 0, proc.stderr
    got = _tensors(out)
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        assert np.array_equal(got[k].numpy(), v) and got[k].numpy().dtype == v.dtype, k
    compressed = tmp_path / "packed.npz"
    np.savez_compressed(compressed, **arrays)  # type: ignore[arg-type]
    out2 = tmp_path / "packed.safetensors"
    assert cli("convert", compressed, out2).returncode == 0
    assert all(np.array_equal(_tensors(out2)[k].numpy(), v) for k, v in arrays.items())


def test_output_follows_umask_and_out_is_given_once(tmp_path: Path) -> None:
    src = tmp_path / "sd.pt"
    torch.save({"w": torch.ones(3)}, src)
    out = tmp_path / "sd.safetensors"
    proc = subprocess.run(
        ["sh", "-c", 'umask 027 && exec "$@"', "sh", *SAFELOAD_CMD, "convert", str(src), str(out)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SAFELOAD_POLICY"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    both = cli("convert", src, out, "-o", out, "--force")
    assert both.returncode == 2 and "not both" in both.stderr
    neither = cli("convert", src)
    assert neither.returncode == 2 and "safeload convert IN OUT" in neither.stderr
