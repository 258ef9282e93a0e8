"""Local paths the policy pins under ``[files]``: opened only if their bytes are the pinned ones.

A pinned file is hashed into the store on first use; later uses find the verified copy by the source's
fingerprint, so a file that changes on disk is hashed again rather than trusted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safeload._trust import audit
from safeload._trust.store import BlobRecord, Store
from safeload.errors import (
    IntegrityError,
)
from safeload.policy import Policy

__all__ = ["VerifiedFile", "local_load_path", "open_verified_local"]


@dataclass(frozen=True)
class VerifiedFile:
    """A ``[files]``-pinned local file, copied into the store; loaders read ``path``, never the source."""

    path: Path  # the read-only blob in the store
    digest: str
    source: str  # the pinned local path, as normalised in the policy


def _pinned_key(path: str | os.PathLike[str], policy: Policy) -> str | None:
    raw = os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if raw in policy.files:
        return raw
    real = os.path.realpath(raw)
    return real if real in policy.files else None


def open_verified_local(path: str | os.PathLike[str], policy: Policy) -> VerifiedFile | None:
    """If ``path`` is pinned in ``[files]``, return its verified copy in the store; else None.

    The file is opened once (no symlink following at the last component), copied into the store while
    hashed, and the copy is what the loader reads. If the same file was verified before and its stat
    (device, inode, size, mtime, ctime) is unchanged, the existing blob is reused after a cheap check.

    Raises:
        IntegrityError: the file's bytes differ from the pin (nothing is loaded).
    """
    key = _pinned_key(path, policy)
    if key is None:
        return None
    pinned = policy.files[key]
    store = Store(policy.store)
    # Warm: nothing is written and no lock taken, so a store this process may only read serves it.
    hit = _local_warm(store, key, pinned)
    if hit is not None:
        return hit
    with store.lock(f"local:{key}"):
        hit = _local_warm(store, key, pinned)  # another process may have copied it while we waited
        if hit is not None:
            return hit
        fp = _source_fingerprint(key)
        with store.staging() as staging:  # held until the record exists, so gc cannot take the blob
            rec = store.ingest_copy(Path(key), staging, expected=pinned, what=f"[files] {key}")
            store.write_local(
                key,
                {
                    "digest": rec.digest,
                    "source_stat": fp,
                    "blob": {
                        "digest": rec.digest,
                        "size": rec.size,
                        "ino": rec.ino,
                        "mtime_ns": rec.mtime_ns,
                        "ctime_ns": rec.ctime_ns,
                    },
                },
            )
        return VerifiedFile(path=store.blob_path(rec.digest), digest=rec.digest, source=key)


def _source_fingerprint(key: str) -> list[int]:
    try:
        st = os.stat(key)
    except OSError as e:
        raise IntegrityError(f"[files] {key}: cannot read the pinned file ({e})") from None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _local_warm(store: Store, key: str, pinned: str) -> VerifiedFile | None:
    """The store copy of the pinned file ``key`` if it was copied before and neither has changed."""
    fp = _source_fingerprint(key)
    seen = store.read_local(key)
    if seen is None or seen.get("digest") != pinned or seen.get("source_stat") != fp:
        return None
    blob = seen.get("blob")
    if not isinstance(blob, dict):
        return None
    try:
        rec = store.check_blob(BlobRecord(**blob))
    except (IntegrityError, TypeError):
        return None  # a fresh copy replaces it
    return VerifiedFile(path=store.blob_path(rec.digest), digest=rec.digest, source=key)


def local_load_path(path: str | os.PathLike[str], policy: Policy) -> str:
    """What ``safeload.load`` opens for a local ``path``: its verified store copy when ``[files]`` pins it,
    else the path itself (local files are always sandboxed). Records the decision in the audit log.

    Raises:
        IntegrityError: the path is pinned and its bytes differ from the pin.
        AuditLogError: the audit log cannot be written.
    """
    source = os.fspath(path)
    try:
        verified = open_verified_local(source, policy)
    except IntegrityError as e:
        audit.record(policy, source=source, decision="refuse", reason=f"IntegrityError: {e}")
        raise
    if verified is None:
        audit.record(policy, source=source, decision="allow", reason="not pinned in [files]; sandboxed load")
        return source
    audit.record(
        policy,
        source=verified.source,
        files={verified.source: verified.digest},
        decision="allow",
        reason="pinned in [files]; loading the verified copy",
    )
    return str(verified.path)
