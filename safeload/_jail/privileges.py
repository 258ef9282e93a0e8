"""Who the jail runs as, and what it may reach on the host.

Measured on Debian 12 (bubblewrap 0.8, kernel 6.x): started as root, bubblewrap maps the sandbox uid
(``--uid 65534`` or any other) to *host uid 0* in the user namespace it creates, so the worker is
host root without capabilities: it could write ``/proc/sys`` (unless bound read-only), leave set-uid-root
files in its output folder, and ``RLIMIT_NPROC`` does not apply to it (the kernel exempts uid 0).

So when the launcher runs as root it drops privileges *before* executing bubblewrap: util-linux
``setpriv --reuid=N --regid=N --clear-groups`` gives the chain uid and gid N and no supplementary
groups, which also clears every capability (no ``preexec_fn``; and unlike ``Popen(user=...)`` it lets
Python vfork, which matters for start-up time in a caller that has torch loaded). bubblewrap then runs
unprivileged, creates the user namespace itself and maps the sandbox uid N to host uid N.

N is the run's own (:func:`claim_staging`): drawn at random from :data:`JAIL_ID_RANGE` for each run,
never twice in one process, and never one that the passwd or group database lists, that
``/etc/subuid`` or ``/etc/subgid`` delegates, that a live process holds (any of the real, effective,
saved or file-system ids in ``/proc/*/status``) or that owns an entry of the staging base. A shared uid
such as ``nobody`` would let every other process of that uid (another jail, a host daemon) signal or
ptrace the jail, enter its namespaces (the uid that creates a user namespace holds every capability in
it), tamper with its staging folder before the handover and share its host-level ``RLIMIT_NPROC``. The
draw, its checks and the staging folder cost 1.5-3 ms a run here (75 processes, 300 entries in ``/tmp``,
idle to busy), most of it reading ``/proc/*/status``.

Consequences, all handled here:

- bubblewrap resolves every bind source with ``realpath`` *as uid N*, so a bind source must be
  reachable by a stranger (:func:`reachable` without ids: a uid that owns nothing and is in no group,
  so only the "other" permission bits count; every parent directory searchable by others). ``/usr``
  is; a Python installed under ``/root`` (pyenv) is not, so the jail then uses the distribution's
  interpreter of the same ``major.minor`` (``/usr/bin/python3.X``; extension modules of the same minor
  version are ABI-compatible).
- The input is handed over as an inherited descriptor and ``/in/artifact`` is a symlink to
  ``/proc/self/fd/N``: opening it needs no path to the file (the store lives under the caller's home).
  If the run's uid could not read the file, or could write it, it is first copied into a sealed memfd.
- The output is written to a staging folder under the system temporary directory owned by the run's
  uid (the caller's folder may sit where that uid cannot reach, such as pytest's private temporary
  folders). Its name carries the uid and is made with ``mkdir``, which fails if it exists, so two
  processes that drew the same uid at once cannot both use it. After the run the staging folder and
  everything in it are chowned back to the caller, set-id bits cleared, and moved into the caller's
  folder. A directory descriptor is never passed into the jail instead: ``openat(fd, "..")`` would walk
  out of it.
- ``RLIMIT_NPROC`` now counts, per jail: in the jail's own user namespace and, at the host level, for
  a uid no other process has.

Without root, bubblewrap maps the sandbox uid to the caller's own uid, which holds no privilege to drop.
"""

from __future__ import annotations

import fcntl
import functools
import grp
import os
import pwd
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from safeload.errors import SandboxError, SandboxUnavailableError

__all__ = [
    "JAIL_ID_RANGE",
    "JAIL_USER",
    "JailIds",
    "claim_staging",
    "drop_privileges",
    "fresh_jail_ids",
    "jail_id_range",
    "jail_interpreter",
    "reachable",
    "readable_input",
    "sweep_stale_staging",
]

# 0x7F000000 up to, not into, systemd's "foreign" range 0x7FFE0000-0x7FFEFFFF; below 2^31, which some
# programs and kernel interfaces mishandle. systemd assigns nothing else here (docs/UIDS-GIDS.md).
JAIL_ID_RANGE = range(0x7F000000, 0x7FFE0000)

_STAGE_PREFIX = "safeload-out-"
_ID_LINE = re.compile(rb"^(?:Uid|Gid):\t(\d+)\t(\d+)\t(\d+)\t(\d+)$", re.MULTILINE)
_CLAIM_ATTEMPTS = 64
_SUBID_FILES = ("/etc/subuid", "/etc/subgid")
# Who the jail runs as, for messages written before a run has drawn its ids.
JAIL_USER = (
    f"the jail's unprivileged uid (a fresh one for each run, from {JAIL_ID_RANGE.start} to "
    f"{JAIL_ID_RANGE.stop - 1}, owning no file and in no group)"
)

@dataclass(frozen=True)
class JailIds:
    """The host uid and gid one jail runs as (the same number, used by nothing else on the host)."""

    uid: int
    gid: int


def drop_privileges() -> bool:
    """Whether the jail must be started with dropped privileges (the launcher runs as root)."""
    return os.geteuid() == 0


_issued: set[int] = set()
_issued_lock = threading.Lock()


def _id_map(path: str) -> list[tuple[int, int]]:
    """The (first id, count) ranges ``/proc/self/uid_map`` or ``gid_map`` maps in this user namespace."""
    try:
        with open(path, encoding="ascii") as fh:
            rows = [line.split() for line in fh]
    except OSError:
        return [(0, 1 << 32)]  # no user namespaces in this kernel: every id is the host's
    return [(int(r[0]), int(r[2])) for r in rows if len(r) == 3 and r[0].isdigit() and r[2].isdigit()]


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[range]:
    out = []
    for a0, an in a:
        for b0, bn in b:
            lo, hi = max(a0, b0), min(a0 + an, b0 + bn)
            if lo < hi:
                out.append(range(lo, hi))
    return out


@functools.cache
def jail_id_range() -> range:
    """The ids the jail draws from: :data:`JAIL_ID_RANGE` where this user namespace maps all of it, else
    the upper half of the largest range it maps for both uids and gids (a container with a 65536-id map
    gets 32768-65533), since setting an unmapped id fails with EINVAL.

    Raises:
        SandboxUnavailableError: the namespace maps too few ids to spare one for the jail.
    """
    mapped = _intersect(_id_map("/proc/self/uid_map"), _id_map("/proc/self/gid_map"))
    if any(r.start <= JAIL_ID_RANGE.start and JAIL_ID_RANGE.stop <= r.stop for r in mapped):
        return JAIL_ID_RANGE
    largest = max(mapped, key=len, default=range(0))
    # 65534 and 65535 are nobody's and the kernel's overflow id; ids below 1000 belong to the system.
    start = max(largest.start + len(largest) // 2, 1000)
    stop = min(largest.stop, 65534) if start < 65534 else largest.stop
    if stop - start < 16:
        raise SandboxUnavailableError(
            f"this user namespace maps too few ids ({', '.join(f'{r.start}-{r.stop - 1}' for r in mapped)}) "
            "to give the jail a uid of its own; map at least 65536 (e.g. podman --uidmap 0:100000:65536)"
        )
    return range(start, stop)


def _candidate() -> int:
    ids = jail_id_range()
    return ids.start + secrets.randbelow(len(ids))


def _reserve() -> int:
    """A number from the range that this process has never handed out, marked as handed out."""
    with _issued_lock:
        while True:
            n = _candidate()
            if n not in _issued:
                _issued.add(n)
                return n


def _listed(n: int) -> bool:
    """Whether the passwd or group database knows ``n`` (NSS: files, LDAP, systemd, ...)."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(n)
        except KeyError:
            continue
        except OSError:
            return True  # a database that cannot answer may well list it
        return True
    return False


def _delegated(n: int) -> bool:
    """Whether ``/etc/subuid`` or ``/etc/subgid`` hands ``n`` to some user's namespaces."""
    for path in _SUBID_FILES:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                start = int(fields[1])
                if start <= n < start + int(fields[2]):
                    return True
    return False


def _process_ids() -> set[int]:
    """Every uid and gid (real, effective, saved, file-system) of every live process."""
    ids: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # exited since it was listed
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        for match in _ID_LINE.findall(data):
            ids.update(map(int, match))
    return ids


def _owner_ids(base: str) -> set[int]:
    """The owners and groups of the entries directly in ``base`` (a leftover staging folder among them)."""
    ids: set[int] = set()
    dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(dir_fd):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            ids.update((st.st_uid, st.st_gid))
    finally:
        os.close(dir_fd)
    return ids


def fresh_jail_ids(base: str | None = None) -> JailIds:
    """Ids for one jail: random in :data:`JAIL_ID_RANGE` and, as far as the host shows, nobody's.

    Never the same twice in one process; never listed in the passwd or group database or delegated by
    ``/etc/subuid``/``/etc/subgid``; never held by a live process; never owning an entry of ``base``
    (the system temporary folder by default).

    Raises:
        SandboxUnavailableError: no unused id was found (the range is taken on this host).
    """
    base = tempfile.gettempdir() if base is None else base
    taken: set[int] | None = None
    for _ in range(_CLAIM_ATTEMPTS):
        n = _reserve()
        if _listed(n) or _delegated(n):
            continue
        if taken is None:
            taken = _process_ids() | _owner_ids(base)
        if n not in taken:
            return JailIds(n, n)
    ids = jail_id_range()
    raise SandboxUnavailableError(
        f"found no unused uid for the jail in {ids.start}-{ids.stop - 1} after "
        f"{_CLAIM_ATTEMPTS} draws; free that range of users, groups, subordinate ids and processes"
    )


def _may(
    st: os.stat_result, uid: int | None, gid: int | None, owner_bit: int, group_bit: int, other_bit: int
) -> bool:
    if uid is not None and st.st_uid == uid:
        return bool(st.st_mode & owner_bit)
    if gid is not None and st.st_gid == gid:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)


def reachable(path: str | os.PathLike[str], uid: int | None = None, gid: int | None = None) -> bool:
    """Whether ``uid`` can resolve ``path`` (search permission on every directory above it).

    Without ``uid`` and ``gid``, for a stranger: a uid that owns nothing and is in no group, as every
    jail's uid is, so only the "other" bits count; the answer then holds for every run.
    """
    real = Path(os.path.realpath(path))
    for parent in reversed(real.parents):
        try:
            st = os.stat(parent)
        except OSError:
            return False
        if not _may(st, uid, gid, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return False
    return True


def readable_input(st: os.stat_result, uid: int | None = None, gid: int | None = None) -> bool:
    """Whether the jail may open the input inode as it is: readable, and *not* writable, by ``uid``.

    Without ``uid`` and ``gid``, for a stranger (only the "other" bits count), as in :func:`reachable`.
    """
    if not stat.S_ISREG(st.st_mode):
        return False
    can_read = _may(st, uid, gid, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
    can_write = _may(st, uid, gid, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)
    return can_read and not can_write


def jail_interpreter() -> tuple[str, str]:
    """The Python interpreter the jail runs and the installation prefix to bind read-only.

    Raises:
        SandboxUnavailableError: no interpreter of this Python version is reachable by the jail's uid.
    """
    prefix = sys.base_prefix
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    own = Path(prefix) / "bin" / f"python{version}"
    if not own.exists():
        own = Path(prefix) / "bin" / "python3"
    if not drop_privileges() or reachable(own):
        return str(own), prefix
    system = Path("/usr/bin") / f"python{version}"
    if system.exists() and reachable(system):
        return str(system), "/usr"
    raise SandboxUnavailableError(
        f"the jail runs as {JAIL_USER}, which cannot reach the Python installation at {prefix}; "
        f"make its parent folders searchable by every user (chmod o+x), or install python{version} from "
        f"the distribution (apt-get install -y python{version})"
    )


_swept: set[str] = set()
_swept_lock = threading.Lock()


def _sweep_once(base: str) -> None:
    with _swept_lock:
        if base in _swept:
            return
        _swept.add(base)
    sweep_stale_staging(base)


# A claim locks its folder microseconds after making it; an unlocked folder of the caller's this much older
# is not a claim in progress but a run killed after it took its output back.
_CLAIM_GRACE_S = 600.0


def sweep_stale_staging(base: str, *, now: float | None = None) -> int:
    """Remove staging folders in ``base`` that runs killed before their clean-up left behind.

    A run locks its staging folder (``flock``) before handing it to the jail's uid and holds the lock
    until the folder is gone, so a folder that can be locked belongs to no live run. Only folders named
    ``safeload-out-<uid>`` (a uid from the reserved range) are considered, and only when owned by that
    uid, or by root (the caller, which takes the folder back after the worker ends) and unchanged for
    ``_CLAIM_GRACE_S``: a younger root-owned folder may be another process's claim in the instant
    between ``mkdir`` and its lock. Symlinks and anything else are left alone. ``now`` stands in for the
    clock. Returns how many were removed.
    """
    removed = 0
    now = time.time() if now is None else now
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        suffix = name[len(_STAGE_PREFIX):]
        if not name.startswith(_STAGE_PREFIX) or not suffix.isascii() or not suffix.isdigit():
            continue
        uid = int(suffix)
        if uid not in jail_id_range():
            continue
        path = os.path.join(base, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            taken_back = st.st_uid == os.geteuid() == 0 and now - st.st_ctime > _CLAIM_GRACE_S
            if st.st_uid != uid and not taken_back:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run's
            # Still the folder that was locked (only root or its owner uid, which runs nothing now, could
            # have swapped it); rmtree does not follow symlinks inside it.
            if os.path.samestat(st, os.lstat(path)):
                shutil.rmtree(path, ignore_errors=True)
                removed += not os.path.lexists(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def claim_staging() -> tuple[JailIds, Path, int]:
    """Fresh ids for one run, and its output folder: owned by them, with a descriptor on it.

    The folder is ``safeload-out-<uid>`` in the system temporary folder, made by ``mkdir``, which fails
    if the name exists: so the ids are this run's alone even against another process that drew the
    same number at the same moment (it then draws again). The descriptor is opened while the folder is
    still root's; the launcher takes the folder back through it, never through the path.

    Raises:
        SandboxUnavailableError: the system temporary folder is not reachable by the jail's uid, or no
            unused id was found.
        SandboxError: the staging folder could not be made.
    """
    base = tempfile.gettempdir()
    if not reachable(os.path.join(base, "x")):
        raise SandboxUnavailableError(
            f"the jail runs as {JAIL_USER}, which cannot reach the temporary folder {base}; set TMPDIR "
            "to a folder every user can search (such as /tmp)"
        )
    _sweep_once(base)
    for _ in range(_CLAIM_ATTEMPTS):
        ids = fresh_jail_ids(base)
        path = Path(base) / f"{_STAGE_PREFIX}{ids.uid}"
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise SandboxError(f"could not make the jail's staging folder {path}: {exc}") from exc
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # Held until the run's descriptor is closed: a sweep in another process leaves the folder alone.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a sweep took it in the instant after mkdir: draw again
            os.close(fd)
            continue
        try:
            os.fchmod(fd, 0o700)
            os.fchown(fd, ids.uid, ids.gid)
        except BaseException:
            os.close(fd)
            os.rmdir(path)
            raise
        return ids, path, fd
    raise SandboxError(
        f"every staging folder name tried in {base} was taken ({_STAGE_PREFIX}<uid>, {_CLAIM_ATTEMPTS} "
        "tries); remove stale ones or set TMPDIR to another folder every user can search"
    )
