"""The verified store on its own: blobs, folders, tamper checks, gc and verify."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from safeload.errors import IntegrityError
from safeload.store import BlobRecord, Store


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
