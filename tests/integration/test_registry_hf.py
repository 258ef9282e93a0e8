"""Names resolve only through trust.toml, against a real Hub (olah) and the real huggingface_hub client."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from safetensors import safe_open

from safeload._trust.resolve import fetch_model
from safeload._trust.store import Store
from safeload.errors import IntegrityError, PolicyError, UntrustedSourceError
from safeload.policy import load_policy
from tests.helpers.hubserver import minilm_files
from tests.helpers.trust import pins, sha256_of, write_policy
from tests.integration.conftest import MINILM, TINY, SessionHub

AUDIT_FIELDS = {"time", "mode", "name", "registry", "repo", "revision", "files", "decision", "reason"}


def hub_policy(tmp_path: Path, hub: SessionHub, models: dict[str, dict[str, object]], **kw: object) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
        models=models,
        audit_log=tmp_path / "audit.jsonl",
        **kw,  # type: ignore[arg-type]
    )


def audit_lines(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_pinned_model_is_fetched_verified_and_loaded(tmp_path: Path, hub: SessionHub) -> None:
    real = minilm_files()
    pinned = pins(real)
    policy = hub_policy(
        tmp_path,
        hub,
        {"minilm": {"registry": "hub", "repo": MINILM, "revision": hub.minilm_sha, "files": pinned}},
    )
    got = fetch_model("minilm", policy=load_policy(policy), progress=False)
    assert dict(got.files) == pinned
    assert got.folder == tmp_path / "store/models/hub" / MINILM / hub.minilm_sha
    on_disk = {p.relative_to(got.folder).as_posix() for p in got.folder.rglob("*") if p.is_file()}
    assert on_disk == set(pinned)
    for rel, src in real.items():
        path = got.folder / rel
        assert path.read_bytes() == src.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        assert path.stat().st_ino == Store(tmp_path / "store").blob_path(pinned[rel]).stat().st_ino
    assert stat.S_IMODE(got.folder.stat().st_mode) == 0o555
    with (
        safe_open(str(got.folder / "model.safetensors"), "pt") as verified,
        safe_open(str(real["model.safetensors"]), "pt") as original,
    ):
        assert set(verified.keys()) == set(original.keys())
        key = "embeddings.word_embeddings.weight"
        assert verified.get_tensor(key).equal(original.get_tensor(key))
    # Nothing but the store: the downloads happened in a staging area that is gone now.
    assert list((tmp_path / "store/staging").iterdir()) == []
    (line,) = audit_lines(tmp_path)
    assert AUDIT_FIELDS <= set(line)
    assert line["decision"] == "allow" and line["revision"] == hub.minilm_sha and line["files"] == pinned
    assert line["registry"] == "hub" and line["repo"] == MINILM and line["name"] == "minilm"

    # Warm: same folder, no re-download (the server is not asked: the repo could be gone).
    again = fetch_model("minilm", policy=load_policy(policy), progress=False)
    assert again.folder == got.folder and dict(again.files) == pinned


def test_only_pinned_files_reach_the_folder(tmp_path: Path, hub: SessionHub) -> None:
    files = {"config.json": b'{"a": 1}', "w.safetensors": b"W" * 300, "evil.py": b"import os\n"}
    sha = hub.add_repo("subset/model", files)
    subset = pins({k: files[k] for k in ("config.json", "w.safetensors")})
    policy = hub_policy(
        tmp_path, hub, {"m": {"registry": "hub", "repo": "subset/model", "revision": sha, "files": subset}}
    )
    got = fetch_model("m", policy=load_policy(policy), progress=False)
    assert sorted(os.listdir(got.folder)) == ["config.json", "w.safetensors"]


def test_files_with_identical_bytes_share_one_blob(tmp_path: Path, hub: SessionHub) -> None:
    # The Hub cache links both paths to one downloaded object; ingesting the first must not strand the second.
    same = b"\x07" * 2048
    files = {"config.json": b"{}", "a.safetensors": same, "b/a.safetensors": same, "note.txt": b"{}"}
    sha = hub.add_repo("dedupe/model", files, lfs={"a.safetensors", "b/a.safetensors"})
    entry = {"registry": "hub", "repo": "dedupe/model", "revision": sha, "files": pins(files)}
    policy = hub_policy(tmp_path, hub, {"m": entry})
    got = fetch_model("m", policy=load_policy(policy), progress=False)
    for rel, data in files.items():
        assert (got.folder / rel).read_bytes() == data
    assert (got.folder / "a.safetensors").stat().st_ino == (got.folder / "b/a.safetensors").stat().st_ino


def test_blob_changed_on_server_after_pinning(tmp_path: Path, hub: SessionHub) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"\x01" * 4096}
    sha = hub.add_repo("tamper/server", files)
    policy = hub_policy(
        tmp_path,
        hub,
        {"m": {"registry": "hub", "repo": "tamper/server", "revision": sha, "files": pins(files)}},
    )
    evil = b"\x02" * 4096
    hub.replace_blob("tamper/server", "model.safetensors", evil)
    with pytest.raises(IntegrityError, match=r"model\.safetensors: expected sha256:") as info:
        fetch_model("m", policy=load_policy(policy), progress=False)
    assert "re-pin" in str(info.value)
    store = Store(tmp_path / "store")
    assert not store.model_folder("hub", "tamper/server", sha).exists()
    assert not store.blob_path(sha256_of(evil)).exists()
    assert list(store.staging_root.iterdir()) == []
    (line,) = audit_lines(tmp_path)
    assert line["decision"] == "refuse" and "IntegrityError" in str(line["reason"])


def test_blob_changed_in_store_after_download_is_never_loaded(tmp_path: Path, hub: SessionHub) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"\x05" * 8192}
    sha = hub.add_repo("tamper/store", files)
    policy = load_policy(
        hub_policy(
            tmp_path,
            hub,
            {"m": {"registry": "hub", "repo": "tamper/store", "revision": sha, "files": pins(files)}},
        )
    )
    got = fetch_model("m", policy=policy, progress=False)
    blob = Store(tmp_path / "store").blob_path(pins(files)["model.safetensors"])
    before = blob.stat()
    # Same size, same mtime: only the inode's ctime gives the write away, and that is enough.
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as fh:
        fh.write(b"\x06")
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.chmod(blob, 0o444)
    with pytest.raises(IntegrityError, match="modified after it was verified"):
        fetch_model("m", policy=policy, progress=False)
    report = Store(tmp_path / "store").verify()
    assert report.bad == (pins(files)["model.safetensors"],)
    assert (got.folder / "model.safetensors").read_bytes()[:1] == b"\x06"  # the tampered bytes are there...
    # ...and a file swapped into the verified folder is refused as well.
    folder_cfg = got.folder / "config.json"
    os.chmod(got.folder, 0o755)
    folder_cfg.unlink()
    folder_cfg.write_bytes(b"{}")
    with pytest.raises(IntegrityError, match="no longer points at its verified blob"):
        fetch_model("m", policy=policy, progress=False)


def test_poisoned_user_hub_cache_is_never_read(tmp_path: Path, hub: SessionHub, hf_cache: Path) -> None:
    from huggingface_hub import hf_hub_download

    files = {"config.json": b"{}", "model.safetensors": b"\x07" * 2048}
    sha = hub.add_repo("tamper/cache", files)
    cached = Path(hf_hub_download("tamper/cache", "model.safetensors", revision=sha, endpoint=hub.endpoint))
    real_blob = cached.resolve()
    real_blob.chmod(0o644)
    real_blob.write_bytes(b"\x08" * 2048)
    # huggingface_hub itself hands the poisoned bytes back for that commit without looking at them:
    again = hf_hub_download("tamper/cache", "model.safetensors", revision=sha, endpoint=hub.endpoint)
    assert Path(again).read_bytes() == b"\x08" * 2048
    policy = hub_policy(
        tmp_path,
        hub,
        {"m": {"registry": "hub", "repo": "tamper/cache", "revision": sha, "files": pins(files)}},
    )
    got = fetch_model("m", policy=load_policy(policy), progress=False)
    assert (got.folder / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_branch_name_as_revision_is_refused_when_the_policy_loads(tmp_path: Path, hub: SessionHub) -> None:
    policy = hub_policy(
        tmp_path,
        hub,
        {"m": {"registry": "hub", "repo": TINY, "revision": "main", "files": {"a": "sha256:" + "0" * 64}}},
    )
    with pytest.raises(
        PolicyError, match=r"^.*models\.m\.revision: must be a 40-hex commit id, got \'main\'"
    ):
        load_policy(policy)


def test_unknown_name_is_refused_with_the_pin_command(tmp_path: Path, hub: SessionHub) -> None:
    policy = load_policy(hub_policy(tmp_path, hub, {}))
    with pytest.raises(UntrustedSourceError) as info:
        fetch_model(TINY, policy=policy, progress=False)
    msg = str(info.value)
    assert f"safeload pin hf://{TINY}@<40-hex commit>" in msg
    assert f'[models."{TINY}"]' in msg and 'registry = "hub"' in msg and "revision =" in msg
    assert not (tmp_path / "store/models/hub").exists()
    (line,) = audit_lines(tmp_path)
    assert line["decision"] == "refuse" and line["name"] == TINY and line["mode"] == "enforce"


def test_two_registries_with_the_same_repo_resolve_only_as_pinned(tmp_path: Path, hub: SessionHub) -> None:
    hub_files = {"config.json": b'{"from": "hub"}', "w.safetensors": b"H" * 500}
    sha = hub.add_repo("shared/name", hub_files)
    local_files = {"config.json": b'{"from": "dir"}', "w.safetensors": b"D" * 500}
    root = tmp_path / "dir-registry"
    for rel, data in local_files.items():
        (root / "shared/name").mkdir(parents=True, exist_ok=True)
        (root / "shared/name" / rel).write_bytes(data)
    policy = load_policy(
        write_policy(
            tmp_path / "trust.toml",
            store=tmp_path / "store",
            registries={
                "hub": {"kind": "huggingface", "endpoint": hub.endpoint},
                "mirror": {"kind": "directory", "path": str(root)},
            },
            models={
                "from-hub": {
                    "registry": "hub",
                    "repo": "shared/name",
                    "revision": sha,
                    "files": pins(hub_files),
                },
                "from-dir": {"registry": "mirror", "repo": "shared/name", "files": pins(local_files)},
                # pinned to the hub's bytes but resolved through the directory: no fallback to the hub
                "confused": {"registry": "mirror", "repo": "shared/name", "files": pins(hub_files)},
            },
        )
    )
    a = fetch_model("from-hub", policy=policy, progress=False)
    b = fetch_model("from-dir", policy=policy, progress=False)
    assert (a.folder / "config.json").read_bytes() == hub_files["config.json"]
    assert (b.folder / "config.json").read_bytes() == local_files["config.json"]
    assert a.folder.parent.parent.parent.name == "hub" and "mirror" in b.folder.parts
    # With a fresh store (no blobs to reuse by content), "confused" must come from the mirror, whose
    # bytes are not the pinned ones: refused, and the hub that has them is never asked.
    fresh = load_policy(
        write_policy(
            tmp_path / "fresh.toml",
            store=tmp_path / "store2",
            registries={"mirror": {"kind": "directory", "path": str(root)}},
            models={"confused": {"registry": "mirror", "repo": "shared/name", "files": pins(hub_files)}},
        )
    )
    with pytest.raises(IntegrityError):
        fetch_model("confused", policy=fresh, progress=False)


def test_audit_mode_loads_unpinned_and_logs_enforce_refuses(tmp_path: Path, hub: SessionHub) -> None:
    files = {"config.json": b"{}", "w.safetensors": b"A" * 700}
    sha = hub.add_repo("audit/unpinned", files)
    audit_policy = load_policy(hub_policy(tmp_path, hub, {}, mode="audit"))
    got = fetch_model("audit/unpinned", policy=audit_policy, progress=False)
    assert got.entry.revision == sha  # the branch was resolved once, to a commit
    assert dict(got.files) == pins(files)
    line = audit_lines(tmp_path)[-1]
    assert AUDIT_FIELDS <= set(line)
    assert line["decision"] == "allow-unpinned" and line["mode"] == "audit"
    assert line["revision"] == sha and line["files"] == pins(files)
    assert f"safeload pin hf://audit/unpinned@{sha}" in str(line["reason"])

    # Integrity failures stay fatal in audit mode: the server's declared LFS sha256 is checked.
    hub.replace_blob("audit/unpinned", "w.safetensors", b"B" * 700)
    with pytest.raises(IntegrityError):
        fetch_model(
            f"audit/unpinned@{sha}", policy=load_policy(hub_policy(tmp_path / "x", hub, {}, mode="audit"))
        )

    enforce = load_policy(hub_policy(tmp_path, hub, {}, mode="enforce"))
    with pytest.raises(UntrustedSourceError):
        fetch_model("audit/unpinned", policy=enforce, progress=False)
    assert audit_lines(tmp_path)[-1]["decision"] == "refuse"
