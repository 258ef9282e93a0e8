"""The verified store on its own: blobs, folders, tamper checks, gc and verify."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safeload._trust.store import BlobRecord, ModelExtra, Store
from safeload.errors import IntegrityError, UnsafeStoreError


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def _ingest(store: Store, src: Path, expected: str | None) -> BlobRecord:
    with store.staging() as staging:
        return store.ingest_copy(src, staging, expected=expected, what="test file")


def test_ingest_makes_a_read_only_blob_named_by_its_digest(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    data = os.urandom(10_000_000)  # several chunks
    src.write_bytes(data)
    rec = _ingest(store, src, digest(data))
    blob = store.blob_path(rec.digest)
    assert rec.digest == digest(data) and rec.size == len(data)
    assert blob.read_bytes() == data and stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert list(store.staging_root.iterdir()) == []
    # Ingesting the same bytes again keeps the one blob (same inode).
    again = _ingest(store, src, None)
    assert again.ino == rec.ino and len(list(store.blobs.iterdir())) == 1


def test_mismatch_leaves_nothing(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"actual")
    with pytest.raises(IntegrityError, match=r"test file: expected sha256:0+, got sha256:"):
        _ingest(store, src, "sha256:" + "0" * 64)
    assert list(store.blobs.iterdir()) == [] and list(store.staging_root.iterdir()) == []


def test_symlinks_and_fifos_are_not_followed(store: Store, tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"secret")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(IntegrityError, match="symbolic link"):
        _ingest(store, link, digest(b"secret"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(IntegrityError, match="not a regular file"):
        _ingest(store, fifo, None)


def _publish(store: Store, tmp_path: Path, files: dict[str, bytes], revision: str = "r" * 40) -> Path:
    records = {}
    for rel, data in files.items():
        src = tmp_path / "src" / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        records[rel] = _ingest(store, src, digest(data))
    with store.staging() as staging:
        built = store.build_folder(staging, records)
        rec = store.publish_model(built, registry="reg", repo="org/name", revision=revision, files=records)
    return rec.folder


def test_published_folder_is_read_only_and_checked_cheaply(store: Store, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "sub/w.safetensors": b"x" * 100}
    folder = _publish(store, tmp_path, files)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o555
    record = store.read_model("reg", "org/name", "r" * 40)
    assert record is not None and record.digests == {k: digest(v) for k, v in files.items()}
    assert store.check_model(record) is record  # unchanged fingerprints: nothing re-hashed or rewritten

    # A hard link elsewhere changes the blob's ctime: re-hashed once, found intact, fingerprint refreshed.
    os.link(store.blob_path(digest(b"{}")), tmp_path / "extra-link")
    refreshed = store.check_model(record)
    assert refreshed is not record and refreshed.digests == record.digests
    assert store.check_model(store.read_model("reg", "org/name", "r" * 40)) is not None  # type: ignore[arg-type]

    os.chmod(folder, 0o755)
    (folder / "planted.py").write_bytes(b"import os")
    with pytest.raises(IntegrityError, match=r"planted\.py"):
        store.check_model(refreshed)


def test_republish_replaces_the_folder(store: Store, tmp_path: Path) -> None:
    _publish(store, tmp_path, {"a": b"1", "b": b"2"})
    folder = _publish(store, tmp_path, {"a": b"1"})
    assert sorted(os.listdir(folder)) == ["a"]
    record = store.read_model("reg", "org/name", "r" * 40)
    assert record is not None and set(record.files) == {"a"}


def test_gc_removes_unreferenced_blobs_and_dead_staging(store: Store, tmp_path: Path) -> None:
    _publish(store, tmp_path, {"keep": b"keep"})
    loose = tmp_path / "loose"
    loose.write_bytes(b"loose")
    _ingest(store, loose, None)
    (store.staging_root / "12345-deadbeef").mkdir()
    report = store.gc()
    assert report.removed_blobs == (digest(b"loose"),) and report.freed_bytes == 5
    assert report.removed_staging == 1
    assert store.blob_path(digest(b"keep")).exists()


def test_verify_reports_corrupted_blobs(store: Store, tmp_path: Path) -> None:
    _publish(store, tmp_path, {"a": b"good", "b": b"fine"})
    blob = store.blob_path(digest(b"good"))
    os.chmod(blob, 0o644)
    blob.write_bytes(b"evil")
    report = store.verify()
    assert report.checked == 2 and report.bad == (digest(b"good"),)
    with pytest.raises(IntegrityError, match="modified after it was verified"):
        store.rehash_blob(digest(b"good"))


# A manifest's "extra" object exactly as the first stores wrote it: seven string keys, the evaluation as a
# JSON string. Stores written then must keep loading warm, so these keys and forms never change.
_EVALUATION = {
    "dataset": "glue-sst2",
    "dataset_digest": None,
    "evaluator_revision": "0123abcd",
    "identity": "ci@example.com",
    "metrics": [{"confidence_interval": [0.91, 0.95], "name": "accuracy", "value": 0.93}],
    "signer": "evals",
}
_EXTRA_ON_DISK = {
    "evaluation": json.dumps(_EVALUATION, sort_keys=True),
    "evaluation_config": "sha256:" + "2" * 64,
    "evaluation_digest": digest(b"attestation"),
    "listing": "all",
    "signer_config": "sha256:" + "1" * 64,
    "upstream_bom": digest(b"bom"),
    "upstream_bom_link": "urn:cdx:3e671687-395b-41f5-a30f-a58921a69b79/2",
}


def test_a_record_in_the_first_on_disk_form_reads_as_typed_fields(store: Store, tmp_path: Path) -> None:
    _publish(store, tmp_path, {"w.safetensors": b"w"})
    manifest = store.manifests / "reg" / "org" / "name" / ("r" * 40 + ".json")
    data = json.loads(manifest.read_text())
    data["extra"] = _EXTRA_ON_DISK
    manifest.write_text(json.dumps(data, indent=1, sort_keys=True))
    record = store.read_model("reg", "org/name", "r" * 40)
    assert record is not None and store.check_model(record) is record
    assert record.extra == ModelExtra(
        listed_all=True,
        signer_config="sha256:" + "1" * 64,
        evaluation=_EVALUATION,
        evaluation_digest=digest(b"attestation"),
        evaluation_config="sha256:" + "2" * 64,
        upstream_bom=digest(b"bom"),
        upstream_bom_link="urn:cdx:3e671687-395b-41f5-a30f-a58921a69b79/2",
    )
    # Written back in the same form (a new link changes the blob's ctime, so the manifest is rewritten),
    # and gc keeps the blobs it names.
    os.link(store.blob_path(digest(b"w")), tmp_path / "another-link")
    assert store.check_model(record) is not record
    assert json.loads(manifest.read_text())["extra"] == _EXTRA_ON_DISK
    assert {digest(b"attestation"), digest(b"bom")} <= store.referenced()


def test_a_record_without_extra_or_with_a_bad_one(store: Store, tmp_path: Path) -> None:
    _publish(store, tmp_path, {"w.safetensors": b"w"})
    manifest = store.manifests / "reg" / "org" / "name" / ("r" * 40 + ".json")
    data = json.loads(manifest.read_text())
    assert data["extra"] == {}  # nothing to say: an empty object, as before
    del data["extra"]
    manifest.write_text(json.dumps(data))
    record = store.read_model("reg", "org/name", "r" * 40)
    assert record is not None and record.extra == ModelExtra()
    for bad in ({"listing": 1}, {"evaluation": "not json"}, {"evaluation": "[1]"}, ["listing"]):
        manifest.write_text(json.dumps({**data, "extra": bad}))
        assert store.read_model("reg", "org/name", "r" * 40) is None  # unreadable: fetched again


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "victim"
    outside.parent.mkdir()
    name = hashlib.sha256(b"some/model@rev").hexdigest()[:32] + ".lock"
    (store.locks / name).symlink_to(outside)
    with pytest.raises(IntegrityError, match="symbolic link"), store.lock("some/model@rev"):
        pass
    assert not outside.exists()  # O_CREAT through the link would have made it
    (store.locks / "store.lock").symlink_to(outside)
    with pytest.raises(IntegrityError, match="symbolic link"), store.staging():
        pass
    assert not outside.exists()


@pytest.mark.parametrize("rel", ["../escape", "/abs", "a/../../b", "a//b", "./a", "a\\b", ""])
def test_build_folder_refuses_names_outside_the_folder(store: Store, tmp_path: Path, rel: str) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with store.staging() as staging:
        rec = store.ingest_copy(src, staging, expected=None, what="f")
        with pytest.raises(IntegrityError, match="not a relative path"):
            store.build_folder(staging, {rel: rec})
    assert not (tmp_path / "escape").exists()


# ------------------------------------------------------------------------------ other users, ownership

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other users")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder other users can reach (pytest's own folders are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="safeload-store-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for dirpath, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def as_user(uid: int, fn: Callable[[], object]) -> str:
    """Run ``fn`` in a forked child as ``uid`` (no groups); its result or error, as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            msg = f"ok: {fn()}"
        except BaseException as e:  # reported to the parent
            msg = f"{type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def _listing(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in [*dirs, *files]:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
    return out


@needs_root
def test_an_ordinary_user_publishes_a_model(shared: Path) -> None:
    """Moving the built folder into models/ rewrites its '..': its owner needs write permission on it."""
    root = shared / "store"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    (shared / "w.bin").write_bytes(b"weights")

    def publish() -> str:
        store = Store(root)
        return str(_publish(store, shared, {"w.bin": b"weights"}))

    (shared / "src").mkdir(mode=0o777)
    os.chmod(shared / "src", 0o777)
    got = as_user(NOBODY, publish)
    assert got.startswith("ok: "), got
    folder = Path(got[4:])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o555 and (folder / "w.bin").read_bytes() == b"weights"


@needs_root
def test_a_reader_of_a_root_store_loads_and_writes_nothing(shared: Path) -> None:
    store = Store(shared / "store")
    folder = _publish(store, shared, {"config.json": b"{}", "w.bin": b"x" * 100})
    before = _listing(store.root)

    def warm() -> str:
        reader = Store(shared / "store")
        record = reader.read_model("reg", "org/name", "r" * 40)
        assert record is not None
        reader.check_model(record)
        return (folder / "w.bin").read_text()

    assert as_user(NOBODY, warm) == "ok: " + "x" * 100
    assert _listing(store.root) == before

    def cold() -> None:
        with Store(shared / "store").lock("model:x"):
            pass

    got = as_user(NOBODY, cold)
    assert got.startswith("StoreAccessError: ") and str(store.locks) in got, got
    assert "safeload prefetch" in got and "uid 0" in got
    assert _listing(store.root) == before


def test_store_folders_and_records_ignore_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        store = Store(tmp_path / "store")
        folder = _publish(store, tmp_path, {"sub/w.bin": b"w"})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)  # noqa: E731
    assert mode(store.root) == 0o700  # the root's owner decides who enters
    for d in (store.blobs, store.models, store.manifests, store.locks, store.models / "reg" / "org"):
        assert mode(d) == 0o755, d
    assert mode(folder) == mode(folder / "sub") == 0o555
    assert mode(store.blob_path(digest(b"w"))) == 0o444
    assert mode(store.manifests / "reg" / "org" / "name" / ("r" * 40 + ".json")) == 0o644


@pytest.mark.parametrize("where", ["root", "parent", "models/reg", "manifest", "blobs"])
def test_a_store_others_could_write_is_refused(tmp_path: Path, where: str) -> None:
    parent = tmp_path / "p"
    store = Store(parent / "store")
    _publish(store, tmp_path, {"w.bin": b"w"})
    path = {
        "root": store.root,
        "parent": parent,
        "models/reg": store.models / "reg",
        "manifest": store.manifests / "reg" / "org" / "name" / ("r" * 40 + ".json"),
        "blobs": store.blobs,
    }[where]
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o020)
    with pytest.raises(UnsafeStoreError, match=rf"{path} is writable by group .*chmod go-w {path}"):
        Store(parent / "store").read_model("reg", "org/name", "r" * 40)


def test_a_sticky_world_writable_parent_is_accepted(tmp_path: Path) -> None:
    parent = tmp_path / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)
    Store(parent / "store")
    parent.chmod(0o777)
    with pytest.raises(UnsafeStoreError, match="writable by group and others"):
        Store(parent / "store")


@needs_root
@pytest.mark.parametrize("where", ["root", "blob", "model folder", "top folder"])
def test_a_store_path_owned_by_another_user_is_refused(tmp_path: Path, where: str) -> None:
    store = Store(tmp_path / "store")
    _publish(store, tmp_path, {"w.bin": b"w"})
    path = {
        "root": store.root,
        "blob": store.blob_path(digest(b"w")),
        "model folder": store.model_folder("reg", "org/name", "r" * 40),
        "top folder": store.manifests,
    }[where]
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafeStoreError, match=rf"{path} is owned by uid {NOBODY}.*chown -R 0 {path}"):
        reader = Store(tmp_path / "store")
        record = reader.read_model("reg", "org/name", "r" * 40)
        assert record is not None
        reader.check_model(record)


def test_a_symlinked_store_folder_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    elsewhere = tmp_path / "elsewhere"
    store.models.rename(elsewhere)
    store.models.symlink_to(elsewhere)
    with pytest.raises(UnsafeStoreError, match="symbolic link"):
        Store(tmp_path / "store")


@needs_root
def test_a_store_in_another_users_folder_cannot_be_forged(shared: Path) -> None:
    """The owner of the store's folder swaps its sub-folders for forged ones with matching fingerprints."""
    root = shared / "store"
    victim = Store(root)
    _publish(victim, shared, {"w.bin": b"genuine"})
    os.chown(root, NOBODY, NOBODY)  # the folder is another user's, as when they made it for "sharing"

    def forge() -> None:
        for name in ("blobs", "models", "manifests"):
            os.rename(root / name, root / f"old-{name}")
        blob = root / "blobs" / "sha256" / digest(b"genuine")[7:]
        blob.parent.mkdir(parents=True)
        blob.write_bytes(b"planted")
        folder = root / "models" / "reg" / "org" / "name" / ("r" * 40)
        folder.mkdir(parents=True)
        os.link(blob, folder / "w.bin")
        st = os.lstat(blob)
        rec = {"digest": digest(b"genuine"), "size": st.st_size, "ino": st.st_ino,
               "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
        manifest = root / "manifests" / "reg" / "org" / "name" / ("r" * 40 + ".json")
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"files": {"w.bin": rec}}))

    got = as_user(NOBODY, forge)
    assert got == "ok: None", got
    with pytest.raises(UnsafeStoreError, match=rf"{root} is owned by uid {NOBODY}"):
        reader = Store(root)
        record = reader.read_model("reg", "org/name", "r" * 40)
        assert record is not None and reader.check_model(record)


def test_a_new_store_and_its_missing_parents_are_made_without_group_write(tmp_path: Path) -> None:
    old = os.umask(0o002)  # a user-private-group umask: new folders would be group-writable
    try:
        store = Store(tmp_path / "cache" / "deep" / "store")
        store = Store(tmp_path / "cache" / "deep" / "store")  # and it is accepted the next time
    finally:
        os.umask(old)
    for p in (tmp_path / "cache", tmp_path / "cache" / "deep", store.root):
        assert stat.S_IMODE(p.stat().st_mode) == 0o755, p


@needs_root
def test_a_record_the_reader_cannot_read_names_the_fix(shared: Path) -> None:
    store = Store(shared / "store")
    _publish(store, shared, {"w.bin": b"w"})
    manifest = store.manifests / "reg" / "org" / "name" / ("r" * 40 + ".json")
    manifest.chmod(0o600)  # as an older version wrote it under a private umask
    got = as_user(NOBODY, lambda: Store(shared / "store").read_model("reg", "org/name", "r" * 40))
    assert got.startswith(f"StoreAccessError: cannot read {manifest}"), got
    assert f"chmod -R a+rX {store.root}" in got
