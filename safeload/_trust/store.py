"""The verified store: content-addressed read-only blobs and a read-only folder per model revision.

Layout under the store root::

    blobs/sha256/<hex>                          read-only (0444), named by the sha256 of their bytes
    models/<registry>/<repo>/<revision>/        read-only folder of hard links to blobs (what loaders read)
    manifests/<registry>/<repo>/<revision>.json what the folder holds, and each blob's stat fingerprint
    local/<sha256 of path>.json                 ``[files]`` pins: the local file's stat when it was copied
    staging/<random>/                           private work areas (downloads, temp blobs, folders in build)
    locks/                                      fcntl locks (one per model, one store-wide)

Bytes become visible only by ``rename``: a blob is hashed while it is written to a temp file in staging,
made read-only, then renamed to its digest (a copied source's clean pages are dropped from the page cache
behind the copy, since the blob is what will be read from then on); files a download left in this process's
staging folder are hashed in place instead of copied; a model folder is built in staging and renamed into
place after every file in it is verified. A process killed at any point leaves only staging litter, which
:meth:`Store.gc` removes. Blobs are not fsynced by default (``Store(root, durable=True)`` does): a kill
cannot lose page-cache data, and after a power loss a blob whose data did not reach the disk has a different
size or ctime than its recorded fingerprint, so the next load re-hashes it and refuses it. Two processes
fetching the same model serialise on the model's lock; the second finds the folder and returns it.

Warm loads do not re-hash: each blob's size, inode, mtime and ctime are recorded when it is verified, and
a warm load compares them with one ``stat`` per file. Any difference means the bytes may have changed: the
blob is re-hashed and a mismatch raises :class:`~safeload.errors.IntegrityError`. :meth:`Store.verify`
re-hashes everything on demand.

Who may write, who may read. A warm load writes nothing into the store and takes no lock: it needs only
to read, so a store on a read-only volume, or one that root prepared (``safeload prefetch`` at image build
time) and another user reads, serves warm loads. Only adding to the store (a first fetch, a conversion, a
re-publish) takes a lock under ``locks/`` and works in ``staging/``; where this process may not write
them, that raises :class:`~safeload.errors.StoreAccessError` naming the path (run ``safeload prefetch``
as the store's owner). Re-recording a blob's changed fingerprint after a successful re-hash is skipped
when the store cannot be written (the blob is then re-hashed on each load until its owner loads it). What
may write instead lives outside the store: the audit log (``audit_log``) and the jail's own folders.
Folders the store makes inside itself are 0755 and its files 0444 (blobs) or 0644 (manifests, records)
whatever the umask, so whoever may enter the store root may read all of it; the root itself is made
0755 minus the umask, and its owner decides who enters.

Ownership rule (as ssh's ``StrictModes``): bytes are served only from paths no one but the caller and
root can change. The store root and every folder above it must be owned by the caller or root and not
writable by group or others (a folder above it may be, with the sticky bit, as ``/tmp``); each folder
and file inside the store that a load reads (the top folders, a model folder and its manifest with the
folders that lead to them, each blob) must be owned by the caller or root and not writable by group or
others, checked with the ``stat`` the load makes anyway or one more per folder. Anything else raises
:class:`~safeload.errors.UnsafeStoreError` naming the path and the ``chown``/``chmod`` that fixes it,
before any byte is returned. A root-owned store that the caller can only read is accepted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import stat
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from safeload._relpath import is_safe_relpath
from safeload._trust.hashing import Advance, copy_and_hash, hash_fd
from safeload.errors import IntegrityError, SafeloadError, StoreAccessError, UnsafeStoreError

__all__ = [
    "REPAIR",
    "BlobRecord",
    "GcReport",
    "ModelExtra",
    "ModelRecord",
    "Store",
    "VerifyReport",
    "makedirs_shared",
    "unsafe_reason",
    "write_shared",
]

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Errors that mean "this process may not write here" (permissions, a read-only mount), not a broken store.
_ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_DIR_MODE = 0o755
_FILE_MODE = 0o644


def _noop(_: int) -> None:
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class BlobRecord:
    """A verified blob and the stat fingerprint it had when its bytes were last hashed."""

    digest: str  # "sha256:<hex>"
    size: int
    ino: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, digest: str, st: os.stat_result) -> BlobRecord:
        return cls(
            digest=digest, size=st.st_size, ino=st.st_ino, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns
        )

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.ino, self.mtime_ns, self.ctime_ns) == (
            st.st_size,
            st.st_ino,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelExtra:
    """What a model record keeps besides its files and signature: how the folder was verified (so a warm
    load can tell whether today's policy would still accept it without verifying again) and the other
    blobs the model owns. Written to and read from the manifest's ``"extra"`` object only by
    :meth:`to_json` and :meth:`from_json`, whose on-disk keys are those of the first stores.
    """

    # Audit mode fetched every file the registry listed ("listing": "all"); no pins chose them.
    listed_all: bool = False
    # The fingerprint of the signer's settings and key material the signature was verified with.
    signer_config: str | None = None
    # ``Evaluation.to_json()`` of the verified attestation (on disk: that object as a JSON string).
    evaluation: Mapping[str, Any] | None = None
    evaluation_digest: str | None = None  # the attestation's blob
    # The fingerprint of the requirement, datasets and signer the attestation was verified against.
    evaluation_config: str | None = None
    upstream_bom: str | None = None  # the blob of the BOM the publisher attached
    upstream_bom_link: str | None = None  # its ``urn:cdx:`` BOM-Link, when it has a serial number

    @property
    def blobs(self) -> tuple[str, ...]:
        """The digests of the blobs this names (besides the record's files and signature)."""
        return tuple(d for d in (self.upstream_bom, self.evaluation_digest) if d)

    def to_json(self) -> dict[str, str]:
        """The manifest's ``"extra"`` object: string values, a key only where there is something to say."""
        out: dict[str, str] = {}
        if self.listed_all:
            out["listing"] = "all"
        if self.evaluation is not None:
            out["evaluation"] = json.dumps(dict(self.evaluation), sort_keys=True)
        for key, value in (
            ("signer_config", self.signer_config),
            ("evaluation_digest", self.evaluation_digest),
            ("evaluation_config", self.evaluation_config),
            ("upstream_bom", self.upstream_bom),
            ("upstream_bom_link", self.upstream_bom_link),
        ):
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: object) -> ModelExtra:
        """Read what :meth:`to_json` wrote (an absent object is an empty one); an empty value means absent.

        Raises:
            ValueError: not an object of strings, or ``evaluation`` is not a JSON object (the record is
                then unreadable, and the model is fetched again).
        """
        if data is None:
            return cls()
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"a model record's extra is not an object of strings: {data!r}")
        values: dict[str, str] = {key: value for key, value in data.items() if value}
        evaluation: Mapping[str, Any] | None = None
        if "evaluation" in values:
            parsed = json.loads(values["evaluation"])
            if not isinstance(parsed, dict):
                raise ValueError("a model record's evaluation is not a JSON object")
            evaluation = MappingProxyType(parsed)
        return cls(
            listed_all=values.get("listing") == "all",
            signer_config=values.get("signer_config"),
            evaluation=evaluation,
            evaluation_digest=values.get("evaluation_digest"),
            evaluation_config=values.get("evaluation_config"),
            upstream_bom=values.get("upstream_bom"),
            upstream_bom_link=values.get("upstream_bom_link"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRecord:
    """What a published model folder holds (the manifest next to it)."""

    registry: str
    repo: str
    revision: str
    folder: Path
    files: Mapping[str, BlobRecord]
    signer: str | None = None
    signer_identity: str | None = None
    signature_digest: str | None = None
    extra: ModelExtra = field(default_factory=ModelExtra)

    @property
    def digests(self) -> dict[str, str]:
        return {rel: rec.digest for rel, rec in self.files.items()}


@dataclass(frozen=True, kw_only=True, slots=True)
class GcReport:
    removed_blobs: tuple[str, ...]
    freed_bytes: int
    removed_staging: int


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyReport:
    checked: int
    bad: tuple[str, ...]  # digests whose bytes no longer hash to their name


def _digest_hex(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise IntegrityError(f"not a sha256 digest: {digest!r}")
    return digest[7:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unsafe_reason(path: str | os.PathLike[str], st: os.stat_result, *, sticky_ok: bool = False) -> str | None:
    """Why ``path`` (whose ``lstat`` is ``st``) could be changed by a user other than this one and root.

    None when it cannot: owned by the caller or root and not writable by group or others (with
    ``sticky_ok``, a folder with the sticky bit may be, as ``/tmp``: others may not rename what is not
    theirs in it). The reason ends with the command that fixes it.
    """
    uid = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        return (
            f"{path} is a symbolic link where the store keeps plain folders and files; remove it and check "
            "who can write to the folder holding it"
        )
    if st.st_uid not in (uid, 0):
        return (
            f"{path} is owned by uid {st.st_uid}, neither this user (uid {uid}) nor root, so that user "
            f"could swap the store's bytes after they were verified. Fix: `chown -R {uid} {path}` (as "
            "root), or set `store =` in trust.toml to a folder only you and root can write"
        )
    if st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if st.st_mode & bit)
        return (
            f"{path} is writable by {who} (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), so another user could swap the store's bytes after they were "
            f"verified. Fix: `chmod go-w {path}`"
        )
    return None


def _refuse_unsafe(path: str | os.PathLike[str], st: os.stat_result, *, sticky_ok: bool = False) -> None:
    reason = unsafe_reason(path, st, sticky_ok=sticky_ok)
    if reason is not None:
        raise UnsafeStoreError(reason + "; nothing was loaded from the store")


def _is_access_error(e: OSError) -> bool:
    return e.errno in _ACCESS_ERRNOS


def makedirs_shared(path: Path, mode: int = _DIR_MODE) -> None:
    """Make ``path`` and its missing parents with exactly ``mode`` (not ``mode`` minus the umask)."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)


def write_shared(path: Path, data: bytes, mode: int = _FILE_MODE) -> None:
    """Write ``data`` to the store file ``path`` atomically, with exactly ``mode`` (missing parents 0755).

    Store files are for every user who may enter the store, whatever this process's umask.
    """
    makedirs_shared(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)


def _make_writable_tree(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o700)
        for d in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), 0o700)


def _rmtree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    with contextlib.suppress(OSError):
        _make_writable_tree(path)
    shutil.rmtree(path, ignore_errors=True)


# How a damaged model is repaired; the resolver puts the model's name in place of NAME.
REPAIR = (
    "Repair it with `safeload prefetch --refetch NAME` (drops the damaged copy from the store and fetches "
    "it again)."
)


class Store:
    """A verified store rooted at ``root`` (created on first use)."""

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.durable = durable
        self.blobs = self.root / "blobs" / "sha256"
        self.models = self.root / "models"
        self.manifests = self.root / "manifests"
        self.local = self.root / "local"
        self.staging_root = self.root / "staging"
        self.locks = self.root / "locks"
        self._check_root()
        for d, mode in (
            (self.blobs.parent, _DIR_MODE),
            (self.blobs, _DIR_MODE),
            (self.models, _DIR_MODE),
            (self.manifests, _DIR_MODE),
            (self.local, _DIR_MODE),
            (self.locks, _DIR_MODE),
            (self.staging_root, 0o700),
        ):
            self._top_folder(d, mode)
        # Downloads already turned into blobs, by real path: a Hub cache links every file with the same
        # bytes to one object, which the first ingest consumes.
        self._owned: dict[str, BlobRecord] = {}
        self._owned_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ ownership

    def _check_root(self) -> None:
        """Refuse a store root that a user other than this one and root could change (creating it if
        missing, 0755 minus the umask, and any missing parents the same way)."""
        real = Path(os.path.realpath(self.root))
        missing: list[Path] = []
        p = real
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        for d in reversed(missing):  # not Path.mkdir(parents=True): it makes parents 0777 minus the umask
            try:
                os.mkdir(d, _DIR_MODE)
            except FileExistsError:
                pass
            except OSError as e:
                if not _is_access_error(e):
                    raise
                raise self.access_error(d, e) from None
        path, sticky_ok = real, False
        while True:
            try:
                st = os.lstat(path)
            except OSError as e:
                raise StoreAccessError(f"cannot reach the store {self.root}: {path}: {e.strerror}") from None
            _refuse_unsafe(path, st, sticky_ok=sticky_ok)
            if path.parent == path:
                return
            path, sticky_ok = path.parent, True

    def _top_folder(self, path: Path, mode: int) -> None:
        """Make one of the store's own folders if this process may, and refuse it if someone else could
        change it. A folder that cannot be made here stays missing: reads then find nothing in it."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                os.mkdir(path, mode)
                os.chmod(path, mode)
            except FileExistsError:
                pass
            except OSError as e:
                if _is_access_error(e):
                    return
                raise
            st = os.lstat(path)
        _refuse_unsafe(path, st)
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeStoreError(f"{path} is not a folder; remove it (the store makes it again)")

    def lstat_inside(self, path: Path) -> os.stat_result | None:
        """``lstat`` of ``path`` inside the store, after refusing it or any folder between the store root
        and it that someone else could change; None if it (or a folder on the way) is missing.

        Raises:
            UnsafeStoreError: a component could be changed by a user other than the caller and root.
        """
        rel = Path(path).relative_to(self.root)
        current = self.root
        st: os.stat_result | None = None
        for part in rel.parts:
            current = current / part
            try:
                st = os.lstat(current)
            except (FileNotFoundError, NotADirectoryError):
                return None
            _refuse_unsafe(current, st)
        return st

    def access_error(self, path: Path, e: OSError) -> StoreAccessError:
        """The error for a write into the store that this process may not make (``e``, at ``path``)."""
        try:
            owner = f"uid {os.lstat(self.root).st_uid}"
        except OSError:
            owner = "its owner"
        if e.errno == errno.EROFS:
            where = (
                f"the store {self.root} is on a read-only file system; run `safeload prefetch` (as {owner}) "
                "where it is writable, such as at image build time"
            )
        else:
            where = (
                f"uid {os.geteuid()} may not write into the store {self.root}; run `safeload prefetch` as "
                f"the store's owner ({owner}) so that loads find everything in place, or set `store =` in "
                "trust.toml to a folder this user owns"
            )
        return StoreAccessError(
            f"{path}: {e.strerror}. This load must add to the store (a first fetch, a conversion or a "
            f"repair), but {where}"
        )

    def _read_record(self, path: Path) -> object:
        """The JSON in the store file ``path`` (refused if someone else could change it); None if absent
        or not JSON."""
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                _refuse_unsafe(path, os.lstat(path))
            if _is_access_error(e):
                raise StoreAccessError(
                    f"cannot read {path} ({e.strerror}); the store's owner can make it readable with "
                    f"`chmod -R a+rX {self.root}`, or set `store =` in trust.toml to a folder this user owns"
                ) from None
            raise
        try:
            _refuse_unsafe(path, os.fstat(fd))
            with os.fdopen(os.dup(fd), "rb") as f:
                raw = f.read()
        finally:
            os.close(fd)
        try:
            return json.loads(raw)
        except ValueError:
            return None

    # ------------------------------------------------------------------------------------ locks, staging

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        path = self.locks / name
        try:
            # O_NOFOLLOW: a symlink planted under locks/ must not make the store create files elsewhere.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC | _O_NOFOLLOW, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IntegrityError(
                    f"{path} is a symbolic link; the store's lock files are plain files. Remove it and check "
                    f"who can write to {self.root}"
                ) from None
            if _is_access_error(e) or e.errno == errno.ENOENT:  # ENOENT: locks/ could not be made
                raise self.access_error(path, e) from None
            raise
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive lock on ``key`` (e.g. a model revision) shared by every process using this store."""
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
        with self._flock(name, fcntl.LOCK_EX):
            yield

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private work folder, removed on exit; ``gc`` never removes it while it is in use."""
        with self._flock("store.lock", fcntl.LOCK_SH):
            path = self.staging_root / f"{os.getpid()}-{secrets.token_hex(8)}"
            try:
                path.mkdir(mode=0o700)
            except OSError as e:
                if _is_access_error(e) or e.errno == errno.ENOENT:
                    raise self.access_error(path, e) from None
                raise
            try:
                yield path
            finally:
                _rmtree(path)

    # --------------------------------------------------------------------------------------------- blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs / _digest_hex(digest)

    def blob_record(self, digest: str) -> BlobRecord | None:
        """The blob's current fingerprint if it exists (not a statement that its bytes are intact)."""
        try:
            st = os.lstat(self.blob_path(digest))
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{self.blob_path(digest)} is not a regular file: remove it and fetch again")
        _refuse_unsafe(self.blob_path(digest), st)
        return BlobRecord.from_stat(digest, st)

    def _commit_blob(self, tmp: Path, fd: int, digest: str) -> BlobRecord:
        if self.durable:
            os.fsync(fd)
        os.fchmod(fd, 0o444)
        dest = self.blob_path(digest)
        if dest.exists():
            # Same name means same bytes only if the existing blob is intact: check it like a warm load.
            os.unlink(tmp)
            return self.rehash_blob(digest)
        os.rename(tmp, dest)
        if self.durable:
            _fsync_dir(self.blobs)
        return BlobRecord.from_stat(digest, os.lstat(dest))

    def ingest_copy(
        self,
        src: Path,
        staging: Path,
        *,
        expected: str | None,
        what: str,
        advance: Advance = _noop,
    ) -> BlobRecord:
        """Copy ``src`` into a private temp file and hash the copy; it becomes a blob only if it matches.

        ``src`` is opened once without following symlinks; whatever happens to it afterwards does not
        matter because the blob is the copy. ``what`` names the file in error messages.

        Raises:
            IntegrityError: the bytes hash to something other than ``expected``, or ``src`` is not a
                regular file.
        """
        try:
            # O_NONBLOCK: a FIFO planted under a pinned name must not hang the load before fstat refuses it.
            src_fd = os.open(src, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise IntegrityError(f"{what}: {src} is a symbolic link; pin the real file instead") from None
            raise
        tmp = staging / f"blob-{secrets.token_hex(8)}"
        try:
            if not stat.S_ISREG(os.fstat(src_fd).st_mode):
                raise IntegrityError(f"{what}: {src} is not a regular file")
            dst_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
            try:
                digest, _ = copy_and_hash(src_fd, dst_fd, advance)
                self._check(what, expected, digest)
                return self._commit_blob(tmp, dst_fd, digest)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def ingest_owned(
        self,
        src: Path,
        staging: Path,
        *,
        expected: str | None,
        what: str,
        advance: Advance = _noop,
    ) -> BlobRecord:
        """Like :meth:`ingest_copy` for a file inside this process's own staging folder.

        Nobody else can write there, so the file is hard-linked to a private name and hashed in place
        instead of copied; the linked inode is what becomes the blob.

        Raises:
            IntegrityError: as :meth:`ingest_copy`.
        """
        real = Path(os.path.realpath(src))
        if self.staging_root.resolve() not in real.parents:
            return self.ingest_copy(src, staging, expected=expected, what=what, advance=advance)
        done = self._consumed(real, expected, what)
        if done is not None:
            return done
        tmp = staging / f"blob-{secrets.token_hex(8)}"
        try:
            os.link(real, tmp)
        except OSError:
            done = self._consumed(real, expected, what)
            if done is not None:
                return done
            return self.ingest_copy(real, staging, expected=expected, what=what, advance=advance)
        try:
            fd = os.open(tmp, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
            try:
                digest, _ = hash_fd(fd, advance)
                self._check(what, expected, digest)
                record = self._commit_blob(tmp, fd, digest)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        with self._owned_lock:
            self._owned[str(real)] = record
        # Drop the download's own link now: removing it later would change the blob's ctime after its
        # fingerprint is recorded and cost a needless re-hash on the first warm load.
        with contextlib.suppress(OSError):
            os.unlink(real)
        return record

    def _consumed(self, real: Path, expected: str | None, what: str) -> BlobRecord | None:
        with self._owned_lock:
            record = self._owned.get(str(real))
        if record is not None:
            self._check(what, expected, record.digest)
        return record

    @staticmethod
    def _check(what: str, expected: str | None, digest: str) -> None:
        if expected is not None and digest != expected:
            raise IntegrityError(
                f"{what}: expected {expected}, got {digest}. The bytes differ from the pin; nothing was "
                "stored. If the change is legitimate, re-pin it (safeload pin) after checking why it "
                "changed.",
                path=what, expected=expected, actual=digest,
            )

    def rehash_blob(self, digest: str) -> BlobRecord:
        """Re-hash a blob; return its fresh fingerprint.

        Raises:
            IntegrityError: the blob is missing, not a regular file, or its bytes no longer match its name.
        """
        path = self.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        except OSError as e:
            raise IntegrityError(f"blob {digest} in {self.root} is unreadable ({e}); fetch again") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(f"{path} is not a regular file: remove it and fetch again")
            _refuse_unsafe(path, st)
            actual, _ = hash_fd(fd, mapped=False)  # someone may be tampering with it right now
        finally:
            os.close(fd)
        if actual != digest:
            raise IntegrityError(
                f"the store blob {path} was modified after it was verified (now {actual}); it will not be "
                f"loaded. {REPAIR}",
                path=str(path), expected=digest, actual=actual,
            )
        return BlobRecord.from_stat(digest, st)

    def check_blob(self, record: BlobRecord) -> BlobRecord:
        """The cheap warm-load check: one ``stat``; re-hash only if the fingerprint changed.

        Raises:
            IntegrityError: the blob changed and its bytes no longer match.
        """
        try:
            st = os.lstat(self.blob_path(record.digest))
        except FileNotFoundError:
            raise IntegrityError(
                f"blob {record.digest} vanished from the store {self.root}. {REPAIR}"
            ) from None
        _refuse_unsafe(self.blob_path(record.digest), st)
        if stat.S_ISREG(st.st_mode) and record.matches(st):
            return record
        return self.rehash_blob(record.digest)

    # -------------------------------------------------------------------------------------- model folders

    def model_folder(self, registry: str, repo: str, revision: str) -> Path:
        return self.models / registry / repo / revision

    def _manifest_path(self, registry: str, repo: str, revision: str) -> Path:
        return self.manifests / registry / repo / f"{revision}.json"

    def read_model(self, registry: str, repo: str, revision: str) -> ModelRecord | None:
        """The published record for a model revision, or None if there is no complete folder.

        Raises:
            UnsafeStoreError: the manifest, the folder or a folder leading to them could be changed by a
                user other than the caller and root.
        """
        folder = self.model_folder(registry, repo, revision)
        manifest = self._manifest_path(registry, repo, revision)
        if self.lstat_inside(manifest.parent) is None:
            return None
        data = self._read_record(manifest)
        if not isinstance(data, dict):
            return None
        st = self.lstat_inside(folder)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return None
        try:
            files = {rel: BlobRecord(**rec) for rel, rec in data["files"].items()}
            return ModelRecord(
                registry=registry,
                repo=repo,
                revision=revision,
                folder=folder,
                files=MappingProxyType(files),
                signer=data.get("signer"),
                signer_identity=data.get("signer_identity"),
                signature_digest=data.get("signature_digest"),
                extra=ModelExtra.from_json(data.get("extra")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def check_model(self, record: ModelRecord) -> ModelRecord:
        """Warm-load check of a published folder: exactly the recorded files, each linked to an intact blob.

        Raises:
            IntegrityError: a file was added, removed or replaced, or a blob's bytes changed.
        """
        folder = record.folder
        found: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames:  # the folder itself was checked by read_model
                _refuse_unsafe(Path(dirpath, name), os.lstat(Path(dirpath, name)))
            for name in filenames:
                found.add(Path(dirpath, name).relative_to(folder).as_posix())
        if found != set(record.files):
            extra = sorted(found - set(record.files))
            missing = sorted(set(record.files) - found)
            raise IntegrityError(
                f"the verified folder {folder} was modified (unexpected: {extra}, missing: {missing}); it "
                f"will not be loaded. {REPAIR}"
            )
        fresh: dict[str, BlobRecord] = {}
        changed = False
        for rel, rec in record.files.items():
            entry = os.lstat(folder / rel)
            blob = self.blob_path(rec.digest)
            if stat.S_ISLNK(entry.st_mode):
                ok = os.readlink(folder / rel) == str(blob)
            else:
                ok = stat.S_ISREG(entry.st_mode) and entry.st_ino == os.lstat(blob).st_ino
            if not ok:
                raise IntegrityError(
                    f"{folder / rel} no longer points at its verified blob {rec.digest}; it will not be "
                    f"loaded. {REPAIR}"
                )
            new = self.check_blob(rec)
            changed |= new != rec
            fresh[rel] = new
        if not changed:
            return record
        updated = replace(record, files=MappingProxyType(fresh))
        try:
            self._write_manifest(updated)
        except OSError as e:
            if not _is_access_error(e):
                raise
            # A reader of a store it may not write: the bytes were re-hashed and match; the owner's next
            # load records the new fingerprints.
        return updated

    def build_folder(self, staging: Path, files: Mapping[str, BlobRecord]) -> Path:
        """A folder in ``staging`` holding ``files`` as hard links (or symlinks) to their blobs.

        Raises:
            IntegrityError: a name is not a plain relative path inside the folder (callers check names
                already; the store does not rely on it).
        """
        folder = staging / f"folder-{secrets.token_hex(8)}"
        folder.mkdir(mode=0o700)
        for rel in files:
            if not is_safe_relpath(rel):
                raise IntegrityError(
                    f"{rel!r} is not a relative path inside a model folder; nothing was stored"
                )
        for rel, rec in files.items():
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            blob = self.blob_path(rec.digest)
            try:
                os.link(blob, dest)
            except OSError:
                os.symlink(blob, dest)
        return folder

    def publish_model(
        self,
        built: Path,
        *,
        registry: str,
        repo: str,
        revision: str,
        files: Mapping[str, BlobRecord],
        signer: str | None = None,
        signer_identity: str | None = None,
        signature_digest: str | None = None,
        extra: ModelExtra | None = None,
    ) -> ModelRecord:
        """Make ``built`` the read-only folder for the model revision (replacing a stale one) atomically.

        The caller holds the model's :meth:`lock`. Fingerprints are taken after linking, because adding
        a hard link changes a blob's ctime. The folder's own top stays writable by its owner until it is
        in place: moving a folder to another parent rewrites its ``..`` entry, which needs write permission
        on the folder itself (root does not need it, anyone else does).
        """
        final = self.model_folder(registry, repo, revision)
        makedirs_shared(final.parent)
        if os.path.lexists(final):
            # Removed before fingerprints are taken: unlinking changes the ctime of shared blobs.
            trash = built.parent / f"old-{secrets.token_hex(8)}"
            with contextlib.suppress(OSError):
                os.chmod(final, 0o700)
            os.rename(final, trash)
            _rmtree(trash)
        for dirpath, _dirs, _files in os.walk(built, topdown=False):
            # Read-only for everyone is the point; the top is made so once it is in place.
            os.chmod(dirpath, 0o555 if dirpath != str(built) else 0o755)
        fresh = {
            rel: BlobRecord.from_stat(rec.digest, os.lstat(self.blob_path(rec.digest)))
            for rel, rec in files.items()
        }
        record = ModelRecord(
            registry=registry,
            repo=repo,
            revision=revision,
            folder=final,
            files=MappingProxyType(fresh),
            signer=signer,
            signer_identity=signer_identity,
            signature_digest=signature_digest,
            extra=extra if extra is not None else ModelExtra(),
        )
        # Manifest first: a folder without a matching manifest is never served, and a manifest without a
        # folder is ignored, so every crash point leaves either the old state or the new one.
        self._write_manifest(record)
        os.rename(built, final)
        os.chmod(final, 0o555)  # noqa: S103
        _fsync_dir(final.parent)
        return record

    def _write_manifest(self, record: ModelRecord) -> None:
        path = self._manifest_path(record.registry, record.repo, record.revision)
        data = {
            "files": {rel: asdict(rec) for rel, rec in record.files.items()},
            "signer": record.signer,
            "signer_identity": record.signer_identity,
            "signature_digest": record.signature_digest,
            "extra": record.extra.to_json(),
        }
        write_shared(path, json.dumps(data, indent=1, sort_keys=True).encode())

    # ----------------------------------------------------------------------------------------- local pins

    def local_record_path(self, source: str) -> Path:
        return self.local / (hashlib.sha256(source.encode()).hexdigest() + ".json")

    def read_local(self, source: str) -> dict[str, object] | None:
        """The ``[files]`` record for ``source``, or None.

        Raises:
            UnsafeStoreError: the record could be changed by a user other than the caller and root.
        """
        data = self._read_record(self.local_record_path(source))
        return data if isinstance(data, dict) else None

    def write_local(self, source: str, data: Mapping[str, object]) -> None:
        write_shared(self.local_record_path(source), json.dumps(dict(data), sort_keys=True).encode())

    # ------------------------------------------------------------------------------------- maintenance

    def referenced(self) -> set[str]:
        """Digests named by a published model manifest or a ``[files]`` record."""
        refs: set[str] = set()
        for path in self.manifests.rglob("*.json"):
            with contextlib.suppress(ValueError, OSError, KeyError, AttributeError):
                data = json.loads(path.read_text())
                refs.update(rec["digest"] for rec in data["files"].values())
                if data.get("signature_digest"):
                    refs.add(data["signature_digest"])
                refs.update(ModelExtra.from_json(data.get("extra")).blobs)
        for path in self.local.glob("*.json"):
            with contextlib.suppress(ValueError, OSError, KeyError, AttributeError):
                refs.add(json.loads(path.read_text())["digest"])
        return refs

    def gc(self) -> GcReport:
        """Remove unreferenced blobs, manifests without folders, and staging left by dead processes."""
        with self._flock("store.lock", fcntl.LOCK_EX):
            removed_staging = 0
            for child in list(self.staging_root.iterdir()):
                _rmtree(child)
                removed_staging += 1
            for path in list(self.manifests.rglob("*.json")):
                rel = path.relative_to(self.manifests).with_suffix("")
                if not (self.models / rel).is_dir():
                    path.unlink()
            refs = self.referenced()
            removed: list[str] = []
            freed = 0
            for blob in list(self.blobs.iterdir()):
                digest = "sha256:" + blob.name
                if digest not in refs:
                    freed += blob.lstat().st_size
                    blob.unlink()
                    removed.append(digest)
            return GcReport(removed_blobs=tuple(removed), freed_bytes=freed, removed_staging=removed_staging)

    @staticmethod
    def name_repair(exc: SafeloadError, name: str) -> SafeloadError:
        """``exc`` with the model's ``name`` in its repair command (the store knows no names), else itself."""
        text = str(exc)
        if "--refetch NAME" not in text:
            return exc
        named = type(exc)(text.replace("--refetch NAME", f"--refetch {shlex.quote(name)}"))
        named.__dict__.update(exc.__dict__)  # the facts it carries (path, digests) stay with it
        return named

    def drop_model(self, registry: str, repo: str, revision: str) -> tuple[str, ...]:
        """Remove a model revision's folder and manifest, and every blob it names whose bytes no longer
        match their name (or that is not a regular file), so the next fetch stores it anew; return the
        digests of the blobs removed. Intact blobs stay (other models may share them; ``gc`` removes
        what nothing references). Taken under the store lock, as ``gc`` is.
        """
        with self._flock("store.lock", fcntl.LOCK_EX):
            manifest = self._manifest_path(registry, repo, revision)
            digests: set[str] = set()
            with contextlib.suppress(ValueError, OSError, KeyError, AttributeError, TypeError):
                data = json.loads(manifest.read_text())
                digests.update(rec["digest"] for rec in data["files"].values())
                if data.get("signature_digest"):
                    digests.add(data["signature_digest"])
                digests.update(ModelExtra.from_json(data.get("extra")).blobs)
            removed: list[str] = []
            for digest in sorted(digests):
                path = self.blob_path(digest)
                if not os.path.lexists(path):
                    continue
                try:
                    self.rehash_blob(digest)
                except SafeloadError:  # tampered, not a regular file, or writable by others
                    os.unlink(path)
                    removed.append(digest)
            _rmtree(self.model_folder(registry, repo, revision))
            manifest.unlink(missing_ok=True)
            return tuple(removed)

    def verify(self) -> VerifyReport:
        """Re-hash every blob; list the ones whose bytes no longer match their name (they are not removed)."""
        bad: list[str] = []
        checked = 0
        for blob in sorted(self.blobs.iterdir()):
            checked += 1
            try:
                self.rehash_blob("sha256:" + blob.name)
            except (IntegrityError, SafeloadError):
                bad.append("sha256:" + blob.name)
        return VerifyReport(checked=checked, bad=tuple(bad))
