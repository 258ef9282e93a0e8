"""``python -m safeload.kserve`` run as KServe runs a storage initializer: a subprocess given the storage
URI and the destination folder, resolving through a real policy and a ``directory`` registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.trust import pins, write_policy

ROOT = Path(__file__).resolve().parents[2]
NAME = "acme/sentiment"
FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": b"S" * 4096,
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
}


def _registry(tmp_path: Path) -> tuple[Path, Path]:
    """A directory registry holding ``NAME`` and a policy pinning every file of it."""
    root = tmp_path / "registry"
    for rel, data in FILES.items():
        path = root / NAME / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"disk": {"kind": "directory", "path": str(root)}},
        models={NAME: {"registry": "disk", "repo": NAME, "files": pins(FILES)}},
    )
    return root, policy


def _initializer(policy: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SAFELOAD_POLICY", "SAFELOAD_DEBUG")}
    env["SAFELOAD_POLICY"] = str(policy)
    return subprocess.run(
        [sys.executable, "-m", "safeload.kserve", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )


def _files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_copies_the_pinned_files_into_dest(tmp_path: Path) -> None:
    _, policy = _registry(tmp_path)
    dest = tmp_path / "mnt" / "models"  # made, with its parent
    proc = _initializer(policy, f"safeload://{NAME}", dest)
    assert proc.returncode == 0, proc.stderr
    assert _files_in(dest) == FILES
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert all(not p.name.endswith(".tmp") for p in dest.rglob("*"))
    # The copies are the destination's own files, not links into the store.
    store_inodes = {p.stat().st_ino for p in (tmp_path / "store").rglob("*") if p.is_file()}
    assert not {p.stat().st_ino for p in dest.rglob("*") if p.is_file()} & store_inodes

    # Run again (a restarted init container): identical files stay, and nothing else changes.
    again = _initializer(policy, f"safeload://{NAME}", dest)
    assert again.returncode == 0, again.stderr
    assert _files_in(dest) == FILES


def test_refuses_to_overwrite_a_different_file(tmp_path: Path) -> None:
    _, policy = _registry(tmp_path)
    dest = tmp_path / "models"
    (dest / "tokenizer").mkdir(parents=True)
    (dest / "tokenizer/vocab.txt").write_bytes(b"someone else's vocabulary")
    proc = _initializer(policy, f"safeload://{NAME}", dest)
    assert proc.returncode == 1
    assert "tokenizer/vocab.txt" in proc.stderr and "refusing to overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # Checked before any file was written.
    assert _files_in(dest) == {"tokenizer/vocab.txt": b"someone else's vocabulary"}


def test_tampered_registry_file_is_refused_and_not_copied(tmp_path: Path) -> None:
    root, policy = _registry(tmp_path)
    (root / NAME / "model.safetensors").write_bytes(b"T" * 4096)  # changed after pinning
    dest = tmp_path / "models"
    proc = _initializer(policy, f"safeload://{NAME}", dest)
    assert proc.returncode == 1, proc.stderr
    assert "model.safetensors" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not dest.exists() or not any(dest.rglob("*"))  # refused before the first file was written


def test_unknown_name_is_refused_with_the_pin_hint(tmp_path: Path) -> None:
    _, policy = _registry(tmp_path)
    dest = tmp_path / "models"
    proc = _initializer(policy, "safeload://acme/unknown", dest)
    assert proc.returncode == 1
    assert "'acme/unknown' is not in the policy's [models]" in proc.stderr
    assert "safeload pin" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not dest.exists() or not any(dest.iterdir())


def test_other_uri_schemes_and_bad_arguments(tmp_path: Path) -> None:
    _, policy = _registry(tmp_path)
    dest = tmp_path / "models"
    for uri in ("s3://bucket/model", f"hf://{NAME}", "safeload://"):
        proc = _initializer(policy, uri, dest)
        assert proc.returncode == 1, (uri, proc.stderr)
        assert "not a safeload:// URI" in proc.stderr
    assert not dest.exists()
    usage = _initializer(policy, f"safeload://{NAME}")
    assert usage.returncode == 2 and "usage:" in usage.stderr
