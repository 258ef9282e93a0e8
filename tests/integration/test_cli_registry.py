"""``pin``, ``prefetch``, ``verify``, ``bom`` and ``gc`` run as subprocesses against the real test Hub (olah).

The flow a platform team runs: pin a model from the Hub into ``trust.toml``, prefetch it at build time,
stop the network, load it; verify the store and catch a tampered blob; write an ML-BOM that validates
and holds the pinned hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from safetensors.torch import load

# Imported while collecting, before the suite's unpickling guard replaces pickle.Unpickler: loading the
# BERT modules pulls in torch._dynamo, which subclasses pickle.Unpickler at import time.
from transformers import BertModel  # noqa: F401

from tests.helpers.hubserver import HubServer, tiny_bert_files
from tests.integration.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
# The installed console script; the unprivileged test leg runs another interpreter, which has none.
SAFELOAD = Path(sys.executable).with_name("safeload")
SAFELOAD_CMD = [str(SAFELOAD)] if SAFELOAD.exists() else [sys.executable, "-m", "safeload"]


def run(
    args: list[str | Path], env: dict[str, str], *, python: bool = False
) -> subprocess.CompletedProcess[str]:
    base = [sys.executable] if python else SAFELOAD_CMD
    return subprocess.run(
        [*base, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=180
    )


def write_policy(path: Path, endpoint: str, store: Path) -> None:
    path.write_text(
        textwrap.dedent(f"""\
        # deployment policy
        version = 1
        store = "{store}"

        [registries.hub]
        kind = "huggingface"
        endpoint = "{endpoint}"
    """)
    )


def child_env(server: HubServer, tmp: Path, policy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SAFELOAD_"))}
    env.update(server.client_env(tmp / "hf-cache"))
    env["SAFELOAD_POLICY"] = str(policy)
    return env


def add_card_fields(policy: Path, name: str, *lines: str) -> None:
    """Add ``task`` / ``datasets`` (what a model card reports) to the model's table in ``policy``."""
    out = []
    for line in policy.read_text().splitlines():
        out.append(line)
        if line.strip() in (f"[models.{name}]", f'[models."{name}"]'):
            out.extend(lines)
    assert len(out) == len(policy.read_text().splitlines()) + len(lines), policy.read_text()
    policy.write_text("\n".join(out) + "\n")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -------------------------------------------------------------------------------------------------- pin


@pytest.mark.slow
def test_pin_writes_hashes_and_refuses_branches(hub: Any, tmp_path: Path) -> None:
    policy = tmp_path / "trust.toml"
    write_policy(policy, hub.endpoint, tmp_path / "store")
    env = child_env(hub, tmp_path, policy)

    branch = run(["pin", f"hf://{TINY}@main", "--registry", "hub"], env)
    assert branch.returncode == 1, branch.stderr
    assert "Traceback" not in branch.stderr and "--resolve" in branch.stderr

    proc = run(
        ["pin", f"hf://{TINY}@main", "--registry", "hub", "--name", "tiny", "--resolve", "--json"], env
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["revision"] == hub.tiny_sha
    parsed = tomllib.loads(policy.read_text())
    entry = parsed["models"]["tiny"]
    assert entry["repo"] == TINY and entry["revision"] == hub.tiny_sha and entry["registry"] == "hub"
    expected = {rel: sha(data) for rel, data in tiny_bert_files(bin=True).items()}
    assert {k: v for k, v in entry["files"].items() if k in expected} == expected
    assert policy.read_text().startswith("# deployment policy")  # the rest of the file is kept

    # Re-pinning (here by commit) keeps what the model card reports; its datasets are [datasets] entries.
    add_card_fields(policy, "tiny", 'task = "fill-mask"', 'datasets = ["wikipedia"]')
    with policy.open("a") as fh:
        fh.write(
            f'[datasets.wikipedia]\nregistry = "hub"\nrepo = "wikimedia/wikipedia"\nrevision = "{"c" * 40}"\n'
            f'files = {{ "train.parquet" = "sha256:{"d" * 64}" }}\n'
        )
    again = run(["pin", f"hf://{TINY}@{hub.tiny_sha}", "--registry", "hub", "--name", "tiny"], env)
    assert again.returncode == 0, again.stderr
    entry = tomllib.loads(policy.read_text())["models"]["tiny"]
    assert entry["task"] == "fill-mask" and entry["datasets"] == ["wikipedia"]
    assert entry["revision"] == hub.tiny_sha

    check = run(["policy", "check", "--json"], env)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["models"][0]["revision"] == hub.tiny_sha


# ------------------------------------------------------------------------------- prefetch, offline load


@pytest.fixture
def own_hub(tmp_path: Path) -> Iterator[HubServer]:
    """A server this test may stop; its one repo ships only pickle weights (no safetensors)."""
    server = HubServer.start(tmp_path / "olah")
    try:
        yield server
    finally:
        server.stop()


LOAD = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    from safeload.transformers import AutoModel
    model = AutoModel.from_pretrained("acme/bin-only")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
""")


@pytest.mark.slow
def test_prefetch_then_load_offline_verify_and_bom(own_hub: HubServer, tmp_path: Path) -> None:
    files = tiny_bert_files(bin=True)
    reference = load(files.pop("model.safetensors"))
    commit = own_hub.add_repo("acme/bin-only", files)
    policy = tmp_path / "trust.toml"
    store = tmp_path / "store"
    write_policy(policy, own_hub.endpoint, store)
    env = child_env(own_hub, tmp_path, policy)
    pin = run(["pin", f"hf://acme/bin-only@{commit}", "--registry", "hub"], env)
    assert pin.returncode == 0, pin.stderr
    for dataset in ("wikipedia", "bookcorpus"):
        data_commit = own_hub.add_repo(
            f"acme/{dataset}", {"train.txt": f"{dataset}\n".encode()}, repo_type="dataset"
        )
        pinned = run(
            ["pin", f"hf://datasets/acme/{dataset}@{data_commit}", "--registry", "hub", "--name", dataset],
            env,
        )
        assert pinned.returncode == 0, pinned.stderr
    add_card_fields(
        policy, "acme/bin-only", 'task = "feature-extraction"', 'datasets = ["wikipedia", "bookcorpus"]'
    )

    pre = run(["prefetch", "--all", "--json"], env)
    assert pre.returncode == 0, pre.stderr
    prefetched = json.loads(pre.stdout)["models"]
    assert sorted((r["name"], r["kind"]) for r in prefetched) == [
        ("acme/bin-only", "model"),
        ("bookcorpus", "dataset"),
        ("wikipedia", "dataset"),
    ]
    (ready,) = [r for r in prefetched if r["kind"] == "model"]
    assert "model.safetensors" in ready["converted"]

    own_hub.stop()  # the network endpoint is gone from here on
    out = tmp_path / "loaded.safetensors"
    loaded = run(["-c", LOAD, out], env, python=True)  # no HF_HUB_OFFLINE: nothing may try the network
    assert loaded.returncode == 0, loaded.stderr
    got = load(out.read_bytes())
    for name, tensor in reference.items():
        key = name if name in got else name.removeprefix("bert.")
        assert got[key].dtype == tensor.dtype and got[key].equal(tensor), name

    # The BOM holds exactly the pinned hashes, and validates.
    bom_path = tmp_path / "bom.json"
    bom = run(["bom", "-o", bom_path], env)
    assert bom.returncode == 0, bom.stderr
    text = bom_path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    (model,) = [c for c in doc["components"] if c["type"] == "machine-learning-model"]
    assert model["purl"] == f"pkg:huggingface/acme/bin-only@{commit}"
    recorded = {f["name"]: "sha256:" + f["hashes"][0]["content"] for f in model["components"]}
    assert recorded == {rel: sha(data) for rel, data in files.items()}
    params = model["modelCard"]["modelParameters"]
    assert params["modelArchitecture"] == "BertModel" and params["task"] == "feature-extraction"
    data = {c["bom-ref"]: c for c in doc["components"] if c["type"] == "data"}
    assert [data[d["ref"]]["name"] for d in params["datasets"]] == ["acme/wikipedia", "acme/bookcorpus"]
    assert all(c["components"][0]["name"] == "train.txt" for c in data.values())

    ok = run(["verify", "--json"], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["ok"] is True

    # Tamper with a verified blob behind the store's back: verify must catch it.
    digest = sha(files["config.json"]).removeprefix("sha256:")
    blob = store / "blobs" / "sha256" / digest
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"bert", b"gpt2"))
    bad = run(["verify"], env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "config.json" in bad.stdout and "tampered" in bad.stdout
    refused = run(["bom", "-o", tmp_path / "bom2.json"], env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert not (tmp_path / "bom2.json").exists()


# ------------------------------------------------------------------------------- a signed model, offline


def test_signed_model_bom_verify_gc(tmp_path: Path) -> None:
    """A directory registry with a key-signed model: the BOM names the signer, verify re-checks it."""
    from tests.helpers.signing import files_map, generate_key, key_identity, sign_with_key, write_tiny_model

    model = write_tiny_model(tmp_path / "models" / "acme" / "signed")
    keys = generate_key(tmp_path / "keys")
    sign_with_key(model, keys.private)
    pins = files_map(model)
    policy = tmp_path / "trust.toml"
    policy.write_text(
        textwrap.dedent(f"""\
        version = 1
        store = "{tmp_path / "store"}"
        [registries.local]
        kind = "directory"
        path = "{tmp_path / "models"}"
        [signers.release]
        kind = "key"
        public_key = "{keys.public}"
        [models."acme/signed"]
        registry = "local"
        signer = "release"
        task = "text-classification"
        """)
        + "files = { "
        + ", ".join(f'"{rel}" = "{digest}"' for rel, digest in pins.items())
        + " }\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SAFELOAD_"))}
    env["SAFELOAD_POLICY"] = str(policy)

    bom = run(["bom", "-o", "-"], env)
    assert bom.returncode == 0, bom.stderr
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(bom.stdout) is None
    (component,) = [c for c in json.loads(bom.stdout)["components"] if c["type"] == "machine-learning-model"]
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert props["safeload:signer"] == "release"
    assert props["safeload:signer:identity"] == key_identity(keys)
    assert props["safeload:verification"] == "sha256+signature"
    assert {f["name"]: "sha256:" + f["hashes"][0]["content"] for f in component["components"]} == pins
    assert component["modelCard"]["modelParameters"]["task"] == "text-classification"

    gc = run(["gc", "--json"], env)
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["removed_blobs"] == []  # the signature blob is referenced too
    verify = run(["verify", "acme/signed", "--json"], env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    (result,) = json.loads(verify.stdout)["models"]
    assert result["status"] == "ok" and result["signature"] == "verified"
