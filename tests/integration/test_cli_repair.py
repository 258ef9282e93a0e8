"""Store damage has a repair that works, and messages name entries, never store keys or ``None``.

A model from a directory registry is pinned and prefetched through the command line, a blob in the store
is corrupted (as root: ``chmod +w`` and write), the load's ``IntegrityError`` names
``safeload prefetch --refetch NAME``, running it repairs the store, and the load works again. The usual
failures for a directory-registry model (a revision asked for, a tampered blob or folder, a registry
file that no longer matches its pin, the BOM) are checked for ``None`` and ``pins-`` store keys.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, SafeloadError
from safeload.policy import load_policy
from tests.integration.test_cli import as_json, cli

NAME = "org/name"
FILES = {"config.json": b'{"model_type": "demo"}', "weights.bin": b"W" * 4096, "sub/extra.txt": b"x" * 10}


def _setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """An initialised folder with NAME pinned and prefetched; returns (policy, store, env)."""
    for rel, data in FILES.items():
        path = tmp_path / "models" / NAME / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    env = {"HOME": str(tmp_path / "home")}
    store = tmp_path / "store"
    assert cli("init", "--dir", "models", "--store", store, cwd=tmp_path, env=env).returncode == 0
    pin = cli("pin", f"dir://{NAME}", cwd=tmp_path, env=env)
    assert pin.returncode == 0, pin.stderr
    fetched = cli("prefetch", NAME, cwd=tmp_path, env=env)
    assert fetched.returncode == 0, fetched.stderr
    return tmp_path / "trust.toml", store, env


def _corrupt(blob: Path) -> None:
    blob.chmod(blob.stat().st_mode | stat.S_IWUSR)
    with open(blob, "r+b") as f:
        f.write(b"tampered")


def _blob(store: Path, data: bytes) -> Path:
    import hashlib

    return store / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _clean(message: str) -> None:
    # A path into the store may hold the folder's key; what is checked is how entries are called.
    words = re.sub(r"/\S*", "<path>", message)
    assert "None" not in words and "pins-" not in words, message


@pytest.mark.skipif(os.geteuid() != 0, reason="corrupting a read-only blob in place takes root")
def test_prefetch_refetch_repairs_a_tampered_blob(tmp_path: Path) -> None:
    policy_path, store, env = _setup(tmp_path)
    blob = _blob(store, FILES["weights.bin"])
    _corrupt(blob)

    with pytest.raises(IntegrityError) as info:
        fetch_model(NAME, policy=load_policy(policy_path), progress=False)
    assert f"safeload prefetch --refetch {NAME}" in str(info.value)
    _clean(str(info.value))

    # What used to be advised goes round in a circle: gc frees nothing, prefetch repeats the error.
    assert as_json(cli("gc", "--json", cwd=tmp_path, env=env))["removed_blobs"] == []
    again = cli("prefetch", NAME, cwd=tmp_path, env=env)
    assert again.returncode == 1 and f"--refetch {NAME}" in again.stderr
    verified = cli("verify", NAME, cwd=tmp_path, env=env)
    assert verified.returncode == 1 and "safeload prefetch --refetch NAME" in verified.stdout, verified.stdout

    repair = cli("prefetch", "--refetch", NAME, "--json", cwd=tmp_path, env=env)
    assert repair.returncode == 0, repair.stderr
    report = as_json(repair)
    assert report["refetched"] == [{"name": NAME, "removed_blobs": ["sha256:" + blob.name]}]

    fetched = fetch_model(NAME, policy=load_policy(policy_path), progress=False)
    assert (fetched.folder / "weights.bin").read_bytes() == FILES["weights.bin"]
    assert blob.read_bytes() == FILES["weights.bin"]
    assert cli("verify", NAME, cwd=tmp_path, env=env).returncode == 0


def test_refetch_repairs_a_folder_with_an_added_file(tmp_path: Path) -> None:
    policy_path, _store, env = _setup(tmp_path)
    folder = fetch_model(NAME, policy=load_policy(policy_path), progress=False).folder
    folder.chmod(0o755)
    (folder / "planted.py").write_text("import os\n")
    with pytest.raises(IntegrityError) as info:
        fetch_model(NAME, policy=load_policy(policy_path), progress=False)
    assert f"--refetch {NAME}" in str(info.value)
    _clean(str(info.value))
    assert cli("prefetch", "--refetch", NAME, cwd=tmp_path, env=env).returncode == 0
    fetched = fetch_model(NAME, policy=load_policy(policy_path), progress=False)
    assert sorted(p.name for p in fetched.folder.iterdir()) == ["config.json", "sub", "weights.bin"]


def test_usual_failures_name_the_entry_without_none_or_store_keys(tmp_path: Path) -> None:
    import safeload.hub

    policy_path, _store, env = _setup(tmp_path)
    policy = load_policy(policy_path)
    messages: list[str] = []

    with pytest.raises(SafeloadError) as info:
        safeload.hub.snapshot_download(NAME, revision="abc", policy=policy)
    messages.append(str(info.value))
    assert "no revision (directory registry)" in messages[-1]

    from safeload._integrations.folder import prepare

    with pytest.raises(SafeloadError) as info:
        prepare(NAME, weights=False, trust_remote_code=False, policy=policy, revision="abc")
    messages.append(str(info.value))
    assert "no revision (directory registry)" in messages[-1]

    # A registry file changes after the pin, before the first fetch: the error names the entry.
    other = tmp_path / "models" / "org" / "other"
    other.mkdir(parents=True)
    (other / "config.json").write_bytes(b'{"a": 1}')
    assert cli("pin", "dir://org/other", cwd=tmp_path, env=env).returncode == 0
    text = policy_path.read_text()
    policy_path.write_text(text.replace(_sha(b'{"a": 1}'), _sha(b'{"a": 2}')))  # a pin that disagrees
    proc = cli("prefetch", "org/other", cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    messages.append(proc.stderr)
    assert "org/other" in proc.stderr
    policy_path.write_text(text)

    # The BOM's version of a directory-registry model is not its store key.
    (tmp_path / "models" / NAME / "config.json").write_bytes(FILES["config.json"])
    assert cli("prefetch", NAME, cwd=tmp_path, env=env).returncode == 0
    bom = cli("bom", "-o", tmp_path / "bom.json", cwd=tmp_path, env=env)
    assert bom.returncode == 0, bom.stderr
    messages.append(bom.stdout)
    messages.append((tmp_path / "bom.json").read_text())
    doc = json.loads(messages[-1])
    (model,) = [c for c in doc["components"] if c.get("name") == NAME]
    assert "version" not in model and model["purl"] == f"pkg:generic/{NAME}"
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["safeload:revision"].startswith("none (directory registry")

    pinned = cli("pin", f"dir://{NAME}", cwd=tmp_path, env=env)
    messages.append(pinned.stdout + pinned.stderr)
    prefetched = cli("prefetch", NAME, cwd=tmp_path, env=env)
    messages.append(prefetched.stdout)
    for message in messages:
        _clean(message)
