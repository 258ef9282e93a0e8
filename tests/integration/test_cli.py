"""The ``safeload`` command line run as a user runs it: a subprocess on real files.

Local commands: ``--help``, ``python -m safeload``, ``inspect`` on benign and malicious checkpoints,
``convert`` (file and model folder) compared bit for bit with ``torch.load`` run in a throwaway process,
``policy check``, and one-line errors without tracebacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import safeload
from tests.helpers.models import save_model, tiny_gpt2

ROOT = Path(__file__).resolve().parents[2]
# The installed console script; the unprivileged test leg runs another interpreter, which has none.
SAFELOAD = Path(sys.executable).with_name("safeload")
SAFELOAD_CMD = [str(SAFELOAD)] if SAFELOAD.exists() else [sys.executable, "-m", "safeload"]


def cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    base = [sys.executable, "-m", "safeload"] if module else SAFELOAD_CMD
    full_env = {k: v for k, v in os.environ.items() if k != "SAFELOAD_POLICY"}
    full_env.update(env or {})
    return subprocess.run(
        [*base, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, env=full_env, timeout=120
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


class _Reduce:
    """Pickles as a call of ``fn(*args)``; only ever pickled here, never unpickled."""

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


# ---------------------------------------------------------------------------------------------- help


def test_help_lists_every_command() -> None:
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("inspect", "convert", "pin", "verify", "prefetch", "policy", "gc", "bom"):
        assert command in proc.stdout
    assert "exit codes" in proc.stdout


def test_each_command_has_help_with_examples() -> None:
    """Rendered from the real parser in-process: a subprocess per command would only re-test argparse."""
    import argparse

    from safeload.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = dict(sub.choices)
    policy_sub = next(a for a in commands["policy"]._actions if isinstance(a, argparse._SubParsersAction))
    commands["policy check"] = policy_sub.choices["check"]
    assert set(commands) >= {"inspect", "convert", "pin", "verify", "prefetch", "gc", "bom", "policy check"}
    for name, command in commands.items():
        if name == "policy":
            continue
        text = command.format_help()
        assert "examples:" in text and "--json" in text and "exit codes:" in text, name


def test_python_dash_m_works() -> None:
    proc = cli("policy", "check", "--help", module=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: safeload policy check" in proc.stdout


# ---------------------------------------------------------------------------------------------- inspect


@pytest.fixture
def benign_ckpt(tmp_path: Path) -> Path:
    base = torch.arange(12, dtype=torch.float32)
    state = {"w": base.view(3, 4), "w_t": base.view(3, 4).t(), "b": torch.ones(2, dtype=torch.bfloat16)}
    path = tmp_path / "benign.pt"
    torch.save(state, path)
    return path


def test_inspect_benign_is_data_only(benign_ckpt: Path) -> None:
    proc = cli("inspect", benign_ckpt, "--json")
    assert proc.returncode == 0, proc.stderr
    report = as_json(proc)
    assert report["verdict"] == "data-only"
    assert report["format"] == "torch_zip"
    tensors = {t["name"]: t for t in report["tensors"]}
    assert tensors["w"]["shape"] == [3, 4] and tensors["w"]["dtype"] == "float32"
    assert tensors["b"]["dtype"] == "bfloat16"
    assert all(g["severity"] == "data" for g in report["globals"])


def test_inspect_malicious_is_code_bearing_and_runs_nothing(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    payload = {"weights": torch.zeros(2), "x": _Reduce(os.system, (f"touch {canary}",))}
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    proc = cli("inspect", path, "--json")
    assert proc.returncode == 1, proc.stderr
    report = as_json(proc)
    assert report["verdict"] == "code-bearing"
    bad = [g for g in report["globals"] if g["severity"] == "code-bearing"]
    assert [(g["module"], g["name"]) for g in bad] == [(os.system.__module__, "system")]
    assert not canary.exists()
    human = cli("inspect", path)
    assert human.returncode == 1 and "code-bearing" in human.stdout
    assert not canary.exists()


def test_inspect_raw_pickle_with_eval(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Reduce(eval, (f"open({str(canary)!r}, 'w')",)), protocol=2))
    proc = cli("inspect", path, "--json")
    assert proc.returncode == 1, proc.stderr
    report = as_json(proc)
    assert any(
        (g["module"], g["name"], g["severity"]) == ("builtins", "eval", "code-bearing")
        for g in report["globals"]
    )
    assert not canary.exists()


def test_inspect_plain_class_is_a_stub_not_code(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "module.pt"
    torch.save(model, path)
    proc = cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    report = as_json(proc)
    assert report["verdict"] == "stubs"
    assert any(g["name"] == "Linear" and g["severity"] == "stub" for g in report["globals"])


def test_inspect_error_is_one_line_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    proc = cli("inspect", junk)
    assert proc.returncode == 2
    assert proc.stderr.startswith("safeload: error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    missing = cli("inspect", tmp_path / "nope.pt")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------------------------- convert


def _reference(paths: list[Path], scratch: Path) -> list[dict[str, torch.Tensor]]:
    """``torch.load`` in one throwaway process (the test process forbids it); tensors come back as files."""
    outs = [scratch / f"ref-{i}-{p.name}.safetensors" for i, p in enumerate(paths)]
    code = textwrap.dedent(f"""
        import torch
        from safetensors.torch import save_file
        for src, dst in zip({[str(p) for p in paths]!r}, {[str(o) for o in outs]!r}):
            state = torch.load(src, map_location="cpu", weights_only=False)
            tensors = {{k: v for k, v in state.items() if isinstance(v, torch.Tensor)}}
            save_file({{k: v.contiguous().clone() for k, v in tensors.items()}}, dst)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from safetensors.torch import load_file

    return [load_file(o) for o in outs]


def _assert_bit_identical(ref: dict[str, torch.Tensor], path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(ref)
        for name, expected in ref.items():
            got = f.get_tensor(name)
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            flat_got, flat_exp = got.reshape(-1), expected.reshape(-1)
            assert torch.equal(flat_got.view(torch.uint8), flat_exp.view(torch.uint8)), name


@pytest.mark.slow
def test_convert_file_bit_for_bit(benign_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    proc = cli("convert", benign_ckpt, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    report = as_json(proc)
    (ref,) = _reference([benign_ckpt], tmp_path)
    _assert_bit_identical(ref, out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["safeload.source_sha256"] == hashlib.sha256(benign_ckpt.read_bytes()).hexdigest()
    assert meta["safeload.source_sha256"] == report["files"][0]["source_sha256"]
    assert meta["safeload.version"] == safeload.__version__
    again = cli("convert", benign_ckpt, "-o", out)
    assert again.returncode == 2 and "--force" in again.stderr


def test_convert_malicious_keeps_tensors_runs_nothing(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.arange(4.0), "x": _Reduce(os.system, (f"touch {canary}",))}, path)
    strict = tmp_path / "strict.safetensors"
    refused = cli("convert", path, "-o", strict, "--weights-only")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("safeload: error: ") and "Traceback" not in refused.stderr
    assert not strict.exists()
    out = tmp_path / "out.safetensors"
    proc = cli("convert", path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "left out (not tensors): x" in proc.stdout  # what was left out is listed
    with safe_open(str(out), framework="pt") as f:
        assert list(f.keys()) == ["w"]
        assert torch.equal(f.get_tensor("w"), torch.arange(4.0))
    assert not canary.exists()


@pytest.mark.slow
def test_convert_sharded_folder_bit_for_bit(tmp_path: Path) -> None:
    src = tmp_path / "gpt2-sharded"
    save_model(tiny_gpt2(), src, "sharded_bin", shards=3)
    out = tmp_path / "converted"
    proc = cli("convert", src, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(new_index["weight_map"]) == set(index["weight_map"])
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3
    for shard, ref in zip(shards, _reference([src / s for s in shards], tmp_path), strict=True):
        converted = out / shard.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        assert new_index["weight_map"][next(iter(ref))] == converted.name
        _assert_bit_identical(ref, converted)
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert not list(out.glob("*.bin"))


# ---------------------------------------------------------------------------------------------- policy


def test_policy_check_valid_and_invalid(tmp_path: Path) -> None:
    good = tmp_path / "trust.toml"
    good.write_text(
        textwrap.dedent(f"""
        version = 1
        store = "{tmp_path / "store"}"
        [registries.local]
        kind = "directory"
        path = "{tmp_path / "models"}"
        [models."acme/x"]
        registry = "local"
        repo = "acme/x"
        files = {{ "config.json" = "sha256:{"a" * 64}" }}
    """)
    )
    proc = cli("policy", "check", good, "--json")
    assert proc.returncode == 0, proc.stderr
    report = as_json(proc)
    assert report["valid"] and report["models"][0]["name"] == "acme/x"
    assert report["models"][0]["kind"] == "directory"
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('repo = "acme/x"', 'repo = "acme/x"\nrevision = "main"'))
    proc = cli("policy", "check", bad)
    assert proc.returncode == 1
    assert 'models."acme/x".revision' in proc.stdout
