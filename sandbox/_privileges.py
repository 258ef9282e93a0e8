"""Who the jail runs as, and what it may reach on the host.

Measured on Debian 12 (bubblewrap 0.8, kernel 6.x): started as root, bubblewrap maps the sandbox uid
(``--uid 65534`` or any other) to *host uid 0* in the user namespace it creates, so the worker is
host root without capabilities: it could write ``/proc/sys`` (unless bound read-only), leave set-uid-root
files in its output folder, and ``RLIMIT_NPROC`` does not apply to it (the kernel exempts uid 0).

So when the launcher runs as root it drops privileges *before* executing bubblewrap: util-linux
``setpriv --reuid=65534 --regid=65534 --clear-groups`` gives the chain uid and gid 65534
(``nobody``/``nogroup``) and no supplementary groups, which also clears every capability (no
``preexec_fn``; and unlike ``Popen(user=...)`` it lets Python vfork, which matters for start-up time
in a caller that has torch loaded). bubblewrap then runs unprivileged, creates the user namespace itself
and maps the sandbox uid 65534 to host uid 65534. Consequences, all handled here:

- bubblewrap resolves every bind source with ``realpath`` *as uid 65534*, so a bind source must be
  reachable by that uid (every parent directory searchable by others). ``/usr`` is; a Python installed
  under ``/root`` (pyenv) is not, so the jail then uses the distribution's interpreter of the same
  ``major.minor`` (``/usr/bin/python3.X``; extension modules of the same minor version are ABI-compatible).
- The input is handed over as an inherited descriptor and ``/in/artifact`` is a symlink to
  ``/proc/self/fd/N``: opening it needs no path to the file (the store lives under the caller's home).
  If uid 65534 could not read the file, or could write it, it is first copied into a sealed memfd.
- The output is written to a staging folder under the system temporary directory owned by uid 65534
  (the caller's folder may sit where that uid cannot reach, such as pytest's private temporary
  folders). After the run the staging folder and everything in it are chowned back to the caller,
  set-id bits cleared, and moved into the caller's folder. A directory descriptor is never passed into
  the jail instead: ``openat(fd, "..")`` would walk out of it.
- ``RLIMIT_NPROC`` now counts: per jail (the jail's own user namespace) against the limit, and at the
  host level across every process of uid 65534 against the same limit.

Without root, bubblewrap maps the sandbox uid to the caller's own uid, which holds no privilege to drop.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from safeload.errors import SandboxUnavailableError

__all__ = [
    "JAIL_GID",
    "JAIL_UID",
    "drop_privileges",
    "jail_interpreter",
    "probe_bwrap",
    "reachable",
    "readable_input",
    "staging_dir",
]

JAIL_UID = 65534
JAIL_GID = 65534

_INSTALL_HINT = "install it with: apt-get install -y bubblewrap"
_USERNS_HINT = (
    "enable unprivileged user namespaces, e.g. `sysctl -w kernel.unprivileged_userns_clone=1` (Debian), "
    "`sysctl -w user.max_user_namespaces=15000`, or "
    "`sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 24.04+); inside a container, "
    "allow user namespaces (e.g. docker --security-opt seccomp=unconfined)"
)


def drop_privileges() -> bool:
    """Whether the jail must be started with dropped privileges (the launcher runs as root)."""
    return os.geteuid() == 0


def _may(st: os.stat_result, uid: int, gid: int, owner_bit: int, group_bit: int, other_bit: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & owner_bit)
    if st.st_gid == gid:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)


def reachable(path: str | os.PathLike[str], uid: int = JAIL_UID, gid: int = JAIL_GID) -> bool:
    """Whether ``uid`` can resolve ``path`` (search permission on every directory above it)."""
    real = Path(os.path.realpath(path))
    for parent in reversed(real.parents):
        try:
            st = os.stat(parent)
        except OSError:
            return False
        if not _may(st, uid, gid, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return False
    return True


def readable_input(st: os.stat_result, uid: int = JAIL_UID, gid: int = JAIL_GID) -> bool:
    """Whether the jail may open the input inode as it is: readable, and *not* writable, by ``uid``."""
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
        f"the jail runs as uid {JAIL_UID}, which cannot reach the Python installation at {prefix}; "
        f"make its parent folders searchable (chmod o+x), or install python{version} from the "
        f"distribution (apt-get install -y python{version})"
    )


def staging_dir() -> tuple[Path, int]:
    """A fresh output folder the jail's uid owns, under a folder that uid can reach, and a descriptor on it.

    The descriptor is opened while the folder is still root's: the folder sits in a world-writable
    temporary folder and, once given to uid 65534, any process of that uid may rename it and put a
    symlink in its place, so the launcher takes the folder back through the descriptor, never the path.

    Raises:
        SandboxUnavailableError: the system temporary folder is not reachable by the jail's uid.
    """
    base = tempfile.gettempdir()
    if not reachable(os.path.join(base, "x")):
        raise SandboxUnavailableError(
            f"the jail's uid {JAIL_UID} cannot reach the temporary folder {base}; set TMPDIR to a folder "
            "every user can search (such as /tmp)"
        )
    path = Path(tempfile.mkdtemp(prefix="safeload-out-", dir=base))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
        os.fchown(fd, JAIL_UID, JAIL_GID)
    except BaseException:
        os.close(fd)
        raise
    return path, fd


_verdict: str | SandboxUnavailableError | None = None
_verdict_lock = threading.Lock()


def probe_bwrap() -> str:
    """The path of ``bwrap``, after checking once per process that it can create a user namespace.

    The verdict, either way, is kept for the life of the process (restart it after installing
    bubblewrap or enabling user namespaces).

    Raises:
        SandboxUnavailableError: bubblewrap is missing or cannot create the namespaces the jail needs.
    """
    global _verdict
    with _verdict_lock:
        if _verdict is None:
            try:
                _verdict = _probe()
            except SandboxUnavailableError as exc:
                _verdict = exc
        verdict = _verdict
    if isinstance(verdict, SandboxUnavailableError):
        raise SandboxUnavailableError(str(verdict))
    return verdict


def _forget_probe() -> None:
    """Drop the cached verdict (tests that change PATH)."""
    global _verdict
    with _verdict_lock:
        _verdict = None


def _probe() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(
            "bubblewrap is not installed, and safeload never opens pickle files outside its jail; "
            + _INSTALL_HINT
        )
    cmd = [
        bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--", "/usr/bin/true",
    ]
    kwargs: dict[str, object] = {}
    if drop_privileges():
        kwargs = {"user": JAIL_UID, "group": JAIL_GID, "extra_groups": []}
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=30, check=False, **kwargs,  # type: ignore[call-overload]
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailableError(f"could not run bubblewrap ({bwrap}): {exc}; {_INSTALL_HINT}") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip()
        raise SandboxUnavailableError(
            f"bubblewrap cannot create the jail's namespaces here ({detail or f'exit {proc.returncode}'}); "
            f"{_USERNS_HINT}"
        )
    return bwrap
