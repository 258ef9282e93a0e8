"""The store under real concurrency: two processes at once, and a process killed mid-download."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeload._trust.resolve import fetch_model
from safeload._trust.store import Store
from safeload.policy import load_policy
from tests.helpers.trust import pins, write_policy
from tests.integration.conftest import SessionHub

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json, os, sys, time
from pathlib import Path
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
from safeload._trust.resolve import fetch_model
got = fetch_model(sys.argv[1], progress=False)
print(json.dumps({"folder": str(got.folder), "files": dict(got.files)}))
"""


def _child(name: str, go: Path, policy: Path, hub: SessionHub, tmp: Path) -> subprocess.Popen[str]:
    env = {**os.environ, **hub.client_env(tmp / f"hf-{os.urandom(4).hex()}"), "SAFELOAD_POLICY": str(policy)}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, name, str(go)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _policy(tmp_path: Path, hub: SessionHub, repo: str, sha: str, files: dict[str, bytes]) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
        models={"m": {"registry": "hub", "repo": repo, "revision": sha, "files": pins(files)}},
    )


@pytest.mark.slow
def test_two_processes_fetching_the_same_model_both_succeed_with_one_blob(
    tmp_path: Path, hub: SessionHub
) -> None:
    files = {
        "config.json": b'{"n": 2}',
        "a.safetensors": os.urandom(3 << 20),
        "b.safetensors": os.urandom(1 << 20),
    }
    sha = hub.add_repo("race/model", files)
    policy = _policy(tmp_path, hub, "race/model", sha, files)
    go = tmp_path / "go"
    children = [_child("m", go, policy, hub, tmp_path) for _ in range(2)]
    time.sleep(1.0)  # both are importing / waiting at the barrier
    go.touch()
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert results[0]["files"] == pins(files)
    store = Store(tmp_path / "store")
    blobs = sorted(p.name for p in store.blobs.iterdir())
    assert blobs == sorted(d[7:] for d in pins(files).values())  # one blob per distinct content
    assert list(store.staging_root.iterdir()) == []
    folder = Path(results[0]["folder"])
    assert sorted(os.listdir(folder)) == sorted(files)


@pytest.mark.slow
def test_process_killed_mid_download_leaves_nothing_visible(tmp_path: Path, hub: SessionHub) -> None:
    big = os.urandom(64 << 20)
    files = {"config.json": b"{}", "model.safetensors": big}
    sha = hub.add_repo("kill/model", files)
    policy = _policy(tmp_path, hub, "kill/model", sha, files)
    go = tmp_path / "go"
    go.touch()
    child = _child("m", go, policy, hub, tmp_path)
    store_root = tmp_path / "store"
    staging = store_root / "staging"
    deadline = time.monotonic() + 60
    partial = None
    while partial is None and time.monotonic() < deadline and child.poll() is None:
        if staging.is_dir():
            for p in staging.rglob("*"):
                try:
                    if p.is_file() and not p.is_symlink() and 0 < p.stat().st_size < len(big):
                        partial = p
                        break
                except FileNotFoundError:
                    continue
        time.sleep(0.002)
    assert partial is not None, "the download finished before it could be interrupted"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    store = Store(store_root)
    policy_obj = load_policy(policy)
    entry = policy_obj.models["m"]
    assert not store.model_folder("hub", "kill/model", sha).exists()
    assert store.read_model("hub", "kill/model", sha) is None
    assert not store.blob_path(entry.files["model.safetensors"]).exists()
    for blob in store.blobs.iterdir():  # whatever did become a blob is complete and intact
        store.rehash_blob("sha256:" + blob.name)

    got = fetch_model("m", policy=policy_obj, progress=False)  # the next fetch succeeds
    assert (got.folder / "model.safetensors").stat().st_size == len(big)
    report = store.gc()
    assert report.removed_staging >= 1  # the killed process's staging folder
    assert list(store.staging_root.iterdir()) == []
    assert store.verify().bad == ()
