"""A newcomer's first steps, run as command lines in an empty folder.

``safeload init --dir ./models`` then ``safeload pin dir://org/name`` then a load through
``safeload.transformers``; ``pin`` without a trust.toml saying so and showing how to create one; no
implicit registry (``pin hf://`` needs a huggingface registry in trust.toml); the unknown-name hint
suggesting the pin command for the registries the policy has.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from safeload._trust.pinning import pin_hint
from safeload.policy import load_policy, parse_policy
from tests.helpers.models import save_model, tiny_gpt2
from tests.integration.test_cli import cli

COMMIT = "a" * 40


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}


def test_empty_folder_to_a_pinned_verified_load_in_two_commands(tmp_path: Path) -> None:
    work = tmp_path / "project"
    save_model(tiny_gpt2(), work / "models" / "org" / "name", "bin")
    env = _env(tmp_path)

    init = cli("init", "--dir", "./models", cwd=work, env=env)
    assert init.returncode == 0, init.stderr
    assert "next: safeload pin dir://ORG/NAME" in init.stdout
    policy = load_policy(work / "trust.toml")
    assert policy.mode == "enforce" and set(policy.registries) == {"local"}
    assert 'store = "~/.cache/safeload"' in (work / "trust.toml").read_text()  # under HOME, set above

    pin = cli("pin", "dir://org/name", cwd=work, env=env)
    assert pin.returncode == 0, pin.stderr
    assert "pinned org/name (org/name no revision: directory registry)" in pin.stdout
    assert "None" not in pin.stdout

    code = (
        "from safeload.transformers import AutoModel; "
        "m = AutoModel.from_pretrained('org/name'); print(type(m).__name__)"
    )
    load = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_clean_env(), **env},
    )
    assert load.returncode == 0, load.stderr
    assert load.stdout.strip().endswith("GPT2Model")

    # A name that is not pinned: the hint is the pin command for the registry this policy has.
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "from safeload.transformers import AutoModel; AutoModel.from_pretrained('org/other')",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_clean_env(), **env},
    )
    assert other.returncode != 0
    assert "safeload pin dir://org/other" in other.stderr and "hf://" not in other.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "SAFELOAD_POLICY"}


def test_pin_without_a_trust_toml_says_so_and_shows_how_to_create_one(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for args, shows in (
        (["dir://org/name"], "safeload init --dir PATH"),
        (["dir://org/name", "--registry", "local"], "safeload init --dir PATH"),
        ([f"hf://org/name@{COMMIT}"], "safeload init --hub https://huggingface.co"),
    ):
        proc = cli("pin", *args, cwd=tmp_path, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "trust.toml does not exist" in proc.stderr, proc.stderr
        assert shows in proc.stderr and "version = 1" in proc.stderr and "[registries." in proc.stderr
        assert "0 dir:// registries" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "trust.toml").exists()


def test_no_implicit_registry_for_hf(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert cli("init", "--dir", "models", cwd=tmp_path, env=env).returncode == 0
    before = (tmp_path / "trust.toml").read_text()
    proc = cli("pin", f"hf://org/name@{COMMIT}", cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert "no huggingface registry" in proc.stderr and "never implicit" in proc.stderr
    assert 'kind = "huggingface"' in proc.stderr
    assert (tmp_path / "trust.toml").read_text() == before  # nothing was added behind the user's back
    wrong = cli("pin", "dir://org/name", "--registry", "hub", cwd=tmp_path, env=env)
    assert wrong.returncode == 2 and "directory registries there: local" in wrong.stderr


def test_init_writes_named_registries_and_never_overwrites(tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = tmp_path / "etc" / "trust.toml"
    proc = cli(
        "init",
        "--hub",
        "http://127.0.0.1:9/",
        "--dir",
        tmp_path / "srv",
        "--store",
        tmp_path / "st",
        "-o",
        out,
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    policy = load_policy(out)
    assert {n: type(s).__name__ for n, s in policy.registries.items()} == {
        "hub": "HuggingFaceRegistrySpec",
        "local": "DirectoryRegistrySpec",
    }
    assert policy.registries["hub"].endpoint == "http://127.0.0.1:9"  # type: ignore[union-attr]
    assert policy.registries["local"].path == tmp_path / "srv"  # type: ignore[union-attr]
    assert policy.store == tmp_path / "st" and policy.sandbox.unpickler == "inert"
    text = out.read_text()
    assert text.count("\n# ") > 10  # commented
    again = cli("init", "--dir", "x", "-o", out, cwd=tmp_path, env=env)
    assert again.returncode == 2 and "never overwrites" in again.stderr
    assert out.read_text() == text
    bare = cli("init", cwd=tmp_path, env=env)
    assert bare.returncode == 0 and load_policy(tmp_path / "trust.toml").registries == {}
    bad = cli("init", "--hub", "ftp://x", "-o", tmp_path / "bad.toml", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and not (tmp_path / "bad.toml").exists()


@pytest.mark.parametrize(
    ("registries", "want", "absent"),
    [
        (
            '[registries.hub]\nkind = "huggingface"\nendpoint = "https://huggingface.co"\n',
            ["safeload pin hf://org/name@<40-hex commit>", 'registry = "hub"', "revision ="],
            ["dir://", "oci://"],
        ),
        (
            '[registries.disk]\nkind = "directory"\npath = "/srv"\n',
            ["safeload pin dir://org/name", 'registry = "disk"'],
            ["hf://", "revision ="],
        ),
        (
            '[registries.fleet]\nkind = "oci"\nendpoint = "https://reg.example:5000"\nnamespace = "ml"\n',
            ["safeload pin oci://reg.example:5000/ml/org/name@sha256:<digest>"],
            ["hf://", "dir://"],
        ),
        (
            '[registries.a]\nkind = "directory"\npath = "/a"\n'
            '[registries.b]\nkind = "directory"\npath = "/b"\n',
            ["safeload pin dir://org/name --registry a", "safeload pin dir://org/name --registry b"],
            ["hf://"],
        ),
        ("", ["safeload init --dir PATH", "safeload pin dir://org/name"], ["registry = "]),
    ],
)
def test_unknown_name_hint_follows_the_policys_registries(
    registries: str, want: list[str], absent: list[str]
) -> None:
    hint = pin_hint("org/name", parse_policy("version = 1\n" + registries))
    for text in want:
        assert text in hint, (text, hint)
    for text in absent:
        assert text not in hint, (text, hint)
