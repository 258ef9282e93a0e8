"""The store used by ordinary accounts: fetching as one, reading a store root prepared, and forgery.

Run as root (as CI is); each child runs as an unprivileged uid (``setpriv``) with its own ``HOME``:

- an ordinary user's first fetch and warm load into the default store ``~/.cache/safeload``;
- the image pattern: root runs ``safeload prefetch --all`` (a ``pytorch_model.bin`` is converted in the
  jail), then another user loads the model through ``safeload.transformers`` from that store, which it
  may only read (and from a read-only mount of it), writing nothing into it;
- a store inside a folder another user owns: that user swaps the store's folders for forged ones whose
  manifest records the planted blob's real fingerprint; the victim's warm load is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import models as M
from tests.helpers.trust import dump_toml, folder_pins
from tests.helpers.users import NOBODY, REPO, fresh_uid, home_for, run_as, shared_folder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run children as other users")

# Loads a model through safeload.transformers; prints its logits, or the error's type and message.
_LOAD = r"""
import json, sys
import torch
import safeload
from safeload.transformers import AutoModelForCausalLM
out = {}
try:
    for _ in range(int(sys.argv[2])):
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
    with torch.no_grad():
        out["logits"] = model(input_ids=torch.tensor([json.loads(sys.argv[3])])).logits.tolist()
except safeload.SafeloadError as e:
    out["error"] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""

# Fetches a model and reads one file of its verified folder; prints the bytes, or the error.
_FETCH = r"""
import json, sys
from safeload._trust.resolve import fetch_model
try:
    fetched = fetch_model(sys.argv[1])
    print(json.dumps({"data": (fetched.folder / sys.argv[2]).read_text()}))
except Exception as e:
    print(json.dumps({"error": [type(e).__name__, str(e)]}))
"""

# The attacker, owner of the store's folder: moves the victim's folders aside and plants a blob under
# the pinned digest's name, hard-linked from a model folder, with a manifest recording its fingerprint.
_FORGE = r"""
import json, os, sys
from pathlib import Path
from safeload.policy import load_policy
policy = load_policy(Path(sys.argv[1]))
entry = policy.models[sys.argv[2]]
rel, digest = next(iter(entry.files.items()))
root = policy.store
for name in ("blobs", "models", "manifests"):
    if (root / name).exists():
        os.rename(root / name, root / f"moved-{name}")
blob = root / "blobs" / "sha256" / digest.partition(":")[2]
blob.parent.mkdir(parents=True)
blob.write_text("planted")
os.chmod(blob, 0o444)
revision = entry.store_revision()
folder = root / "models" / entry.registry / entry.store_repo / revision
folder.mkdir(parents=True)
os.link(blob, folder / rel)
st = os.lstat(blob)
record = {"digest": digest, "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
          "ctime_ns": st.st_ctime_ns}
manifest = root / "manifests" / entry.registry / entry.store_repo / f"{revision}.json"
manifest.parent.mkdir(parents=True)
manifest.write_text(json.dumps({"files": {rel: record}}))
print(json.dumps({"planted": str(folder / rel)}))
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_folder("safeload-store-users-") as path:
        yield path


def _readable(path: Path) -> None:
    for dirpath, dirs, files in os.walk(path):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)
        del dirs


def _policy(path: Path, registry: Path, models: dict[str, dict[str, object]], store: Path | None) -> Path:
    data: dict[str, object] = {"version": 1, "mode": "enforce"}
    if store is not None:
        data["store"] = str(store)
    data["registries"] = {"local": {"kind": "directory", "path": str(registry)}}
    data["models"] = models
    path.write_text(dump_toml(data))
    path.chmod(0o644)
    return path


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _listing(root: Path) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)
    return out


def _tiny_model(registry: Path, repo: str, layout: M.Layout) -> dict[str, str]:
    folder = M.save_model(M.tiny_gpt2(seed=3), registry / repo, layout)
    _readable(registry)
    return folder_pins(folder)


def test_an_ordinary_user_fetches_into_the_default_store(shared: Path) -> None:
    registry = shared / "registry"
    pins = _tiny_model(registry, "acme/tiny", "safetensors")
    policy = _policy(shared / "trust.toml", registry, {"acme/tiny": {"registry": "local", "repo": "acme/tiny",
                                                                   "files": pins}}, store=None)
    ids = M.INPUT_IDS[0].tolist()
    uid = fresh_uid()
    home = home_for(uid, shared)
    got = _result(run_as(uid, _LOAD, "acme/tiny", "2", json.dumps(ids), home=home,
                         env={"SAFELOAD_POLICY": str(policy)}))
    assert "error" not in got, got
    want = M.logits(M.tiny_gpt2(seed=3))
    assert torch.allclose(torch.tensor(got["logits"]), want, atol=1e-5)
    store = home / ".cache" / "safeload"
    folders = list((store / "models" / "local" / "acme" / "tiny").iterdir())
    assert len(folders) == 1 and os.lstat(folders[0]).st_uid == uid
    assert (os.lstat(folders[0]).st_mode & 0o777) == 0o555


def _mount_read_only(path: Path) -> tuple[str, ...]:
    """A command prefix: a private mount namespace in which ``path`` is a read-only bind of itself."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ("unshare", "-m", "--propagation", "private", "sh", "-c", script, str(path))


@pytest.mark.parametrize(
    "reader",
    ["nobody", "nobody, read-only mount", "root, read-only mount", "nobody, unpacked copy, read-only mount"],
)
def test_a_store_root_prefetched_serves_other_users_and_read_only_mounts(shared: Path, reader: str) -> None:
    registry = shared / "registry"
    pins = _tiny_model(registry, "acme/tiny-bin", "bin")
    store = shared / "store"
    policy = _policy(shared / "trust.toml", registry,
                     {"acme/tiny": {"registry": "local", "repo": "acme/tiny-bin", "files": pins}}, store)
    proc = subprocess.run([sys.executable, "-m", "safeload", "prefetch", "--all", "--policy", str(policy)],
                          capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    derived = list((store / "derived").iterdir())
    assert len(derived) == 1 and (derived[0] / "model.safetensors").is_symlink()
    if "unpacked" in reader:
        # What an image layer unpacked on pull gives: the same paths, bytes, modes and mtimes, and new
        # inodes and ctimes, so no recorded stat fingerprint matches.
        aside = shared / "store-built"
        store.rename(aside)
        subprocess.run(["cp", "-a", str(aside), str(store)], check=True)
        shutil.rmtree(aside)
    before = _listing(store)

    uid = 0 if reader.startswith("root") else NOBODY
    wrap = _mount_read_only(store) if "read-only" in reader else ()
    ids = json.dumps(M.INPUT_IDS[0].tolist())
    home = home_for(fresh_uid(), shared) if uid == 0 else home_for(uid, shared)
    got = _result(run_as(uid, _LOAD, "acme/tiny", "2", ids, home=home, wrap=wrap,
                         env={"SAFELOAD_POLICY": str(policy)}))
    assert "error" not in got, got
    (want,) = M.reference_logits([(registry / "acme" / "tiny-bin", "GPT2LMHeadModel")], M.INPUT_IDS, shared)
    assert torch.allclose(torch.tensor(got["logits"]), want, atol=1e-5)
    assert _listing(store) == before  # a warm load writes nothing into the store

    # With the conversion gone, a reader that may not write the store is told what to run.
    shutil.rmtree(derived[0])
    before = _listing(store)
    got = _result(run_as(uid, _LOAD, "acme/tiny", "1", ids, home=home, wrap=wrap,
                         env={"SAFELOAD_POLICY": str(policy)}))
    if uid == 0 and not wrap:
        return
    assert got.get("error", [None])[0] == "StoreAccessError", got
    message = got["error"][1]  # type: ignore[index]
    assert str(store / "derived") in message and "safeload prefetch" in message
    assert _listing(store) == before


def test_a_store_in_another_users_folder_cannot_be_forged(shared: Path) -> None:
    registry = shared / "registry"
    (registry / "acme" / "data").mkdir(parents=True)
    (registry / "acme" / "data" / "weights.txt").write_text("genuine")
    _readable(registry)
    store = shared / "team-store"
    store.mkdir()
    store.chmod(0o777)  # "shared" with the team by the user who made it
    os.chown(store, NOBODY, NOBODY)
    pins = folder_pins(registry / "acme" / "data")
    policy = _policy(shared / "trust.toml", registry,
                     {"acme/data": {"registry": "local", "repo": "acme/data", "files": pins}}, store)
    victim = fresh_uid()
    victim_home = home_for(victim, shared)
    env = {"SAFELOAD_POLICY": str(policy)}

    # Refused already (the folder is another user's); were it not, this would be the genuine model.
    first = _result(run_as(victim, _FETCH, "acme/data", "weights.txt", home=victim_home, env=env))
    assert first.get("data", "genuine") == "genuine", first

    forged = _result(run_as(NOBODY, _FORGE, str(policy), "acme/data", home=home_for(NOBODY, shared)))
    assert Path(str(forged["planted"])).read_text() == "planted"

    got = _result(run_as(victim, _FETCH, "acme/data", "weights.txt", home=victim_home, env=env))
    assert "data" not in got, got  # the planted bytes were never returned
    kind, message = got["error"]  # type: ignore[misc]
    assert kind == "UnsafeStoreError"
    assert f"{store} is owned by uid {NOBODY}" in message and f"chown -R {victim} {store}" in message
