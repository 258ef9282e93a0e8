"""Real podman containers (runtime runc) that run Python with this checkout's safeload inside.

Users run safeload in containers whose runtimes take away what the full jail needs: a fresh ``/proc``
(every runtime masks parts of it), new user namespaces (Docker's seccomp profile), root (``--user``), a
writable root filesystem, or the host's ids (uid-mapped containers). Each of those situations is a
:class:`ContainerConfig`; :data:`CONFIGS` holds the ones users run. :class:`Podman` runs a snippet in a
container of one configuration and returns the finished process.

No image registry is reachable, so there is no image: every container gets its own root filesystem folder
holding only mount points, a minimal ``/etc/passwd`` and ``/etc/group`` and the host's top-level symlinks
(``/bin -> usr/bin``...); the host's ``/usr``, this checkout, the virtual environment and the Python
prefix it was made from (a pyenv Python under ``/root/.pyenv``, say) are bound read-only at their own
paths, so the virtual environment's interpreter runs unchanged. ``/tmp`` and ``$HOME`` are tmpfs.

Podman's state never touches the machine's: ``CONTAINERS_CONF`` and ``CONTAINERS_STORAGE_CONF`` point
at files written under the harness's own folder, which holds the storage (driver vfs: nothing is ever
mounted from it), the run root, podman's temporary folder and the volume path, and is removed by
:meth:`Podman.close`. That containers.conf also sets runtime runc (crun refuses hybrid cgroup hierarchies),
the cgroupfs manager (no systemd), no network by default (podman's default bridge network would install
firewall rules and a bridge on the host) and no event log.

Facts measured with Debian 12's podman 4.3.1 and runc 1.1.5 (root, 2 cores):
- ``--rootfs`` takes no value: it makes the first positional argument a folder instead of an image, so
  every option must come before that folder; options after it are silently taken as the command.
- ``--ulimit nofile=20000:20000 --ulimit nproc=32768:32768`` is required: as root podman otherwise asks
  runc for 1048576 open files, which root without CAP_SYS_RESOURCE may not raise its hard limit to
  ("error setting rlimit type 7: operation not permitted").
- With ``--uidmap``/``--gidmap`` as root no ``/etc/subuid`` entry is needed; the mapped ids see host
  files as "other", so every bound folder must be world-readable and its parents world-searchable.
- Podman writes ``/etc/hosts``, ``/etc/hostname`` and ``/run/.containerenv`` into a ``--rootfs`` folder,
  so each container gets a folder of its own. ``--tmpfs`` takes no ``uid=`` option; ``U`` gives the
  tmpfs to the container's user.
- As root, podman keeps its "alive" lock under ``tmp_dir`` (``/run/libpod`` by default) and netavark its
  lock under ``/run/containers/networks`` whatever the configuration; runc keeps each running
  container's state under ``/run/runc`` (removed with the container) and, with cgroupfs, puts it in
  ``libpod_parent/libpod-ID`` of each cgroup hierarchy (removed too).
- A container starts and exits in about 0.15 s; importing torch inside costs about 1 s more.

Example::

    podman = Podman.create()
    done = podman.run(CONFIGS[0], "import os; print(os.getuid())")
    assert done.returncode == 0, done.stderr
    podman.close()
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest

__all__ = [
    "CONFIGS",
    "ContainerConfig",
    "Podman",
    "docker_seccomp_profile",
    "podman_seccomp_profile",
    "podman_session",
    "podman_unavailable",
]

REPO = Path(__file__).resolve().parents[2]

# Podman's own default profile, where Debian and upstream install it.
_SECCOMP_PATHS = (Path("/usr/share/containers/seccomp.json"), Path("/etc/containers/seccomp.json"))

ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ContainerConfig:
    """How one container is run.

    ``user`` is podman's ``--user`` value (``"65534:65534"``), ``uidmap`` a ``container:host:count`` map
    used for both ``--uidmap`` and ``--gidmap``, ``seccomp`` podman's default profile, the profile
    :func:`docker_seccomp_profile` derives from it, or none; ``extra`` more podman options, placed before
    the root filesystem folder.
    """

    name: str
    user: str | None = None
    read_only: bool = False
    seccomp: Literal["default", "docker", "unconfined"] = "default"
    uidmap: str | None = None
    extra: tuple[str, ...] = ()

    @property
    def uid(self) -> int:
        """The uid the container's process runs as, inside the container."""
        return int(self.user.split(":")[0]) if self.user else 0

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1]) if self.user and ":" in self.user else self.uid


CONFIGS: tuple[ContainerConfig, ...] = (
    # runc's defaults: masked /proc paths, read-only /proc/sys, podman's seccomp profile, root
    ContainerConfig(name="podman-default"),
    # Docker's default seccomp rules (also BuildKit RUN steps and Kubernetes RuntimeDefault)
    ContainerConfig(name="docker-seccomp", seccomp="docker"),
    ContainerConfig(name="user-nobody", user="65534:65534"),
    ContainerConfig(name="read-only-root", read_only=True),
    # rootless podman, Docker's userns-remap, Kubernetes hostUsers: false
    ContainerConfig(name="uid-mapped", uidmap="0:200000:65536"),
    # Docker's rules with CAP_SYS_ADMIN, which they need for namespaces and mounts; /proc still masked
    ContainerConfig(name="docker-seccomp-sys-admin", seccomp="docker", extra=("--cap-add", "SYS_ADMIN")),
    # what an error message once advised: no syscall filter at all, /proc still masked
    ContainerConfig(name="seccomp-unconfined", seccomp="unconfined"),
    # nothing masked or filtered (docker --security-opt seccomp=unconfined --security-opt
    # systempaths=unconfined, as for nested containers): the one where a fresh /proc can be mounted
    ContainerConfig(name="unmasked-unconfined", seccomp="unconfined", extra=("--security-opt", "unmask=ALL")),
)


def podman_unavailable() -> str | None:
    """Why containers cannot run here, or None when podman and runc are installed and this is root."""
    if os.geteuid() != 0:
        return "not root (the tests run podman as root: explicit uid maps, runc's state under /run/runc)"
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (scripts/run setup installs them with apt-get)"
    if podman_seccomp_path() is None:
        return f"podman's seccomp profile is missing (looked at {', '.join(map(str, _SECCOMP_PATHS))})"
    return None


def podman_seccomp_path() -> Path | None:
    return next((p for p in _SECCOMP_PATHS if p.is_file()), None)


def podman_seccomp_profile() -> dict[str, Any]:
    path = podman_seccomp_path()
    if path is None:
        raise FileNotFoundError(f"podman's default seccomp profile: none of {_SECCOMP_PATHS}")
    profile: dict[str, Any] = json.loads(path.read_text())
    return profile


# What Docker's default profile grants only with CAP_SYS_ADMIN: new namespaces, joining namespaces, and
# every mount call, old API and new. Podman's profile allows them all unconditionally.
_ADMIN_ONLY = frozenset({
    "clone", "clone3", "unshare", "setns",
    "mount", "umount", "umount2", "pivot_root",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
})
_CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
_EPERM, _ENOSYS = 1, 38
_NO_ADMIN = {"caps": ["CAP_SYS_ADMIN"]}


def docker_seccomp_profile(podman_profile: Mapping[str, Any]) -> dict[str, Any]:
    """Podman's default seccomp profile with Docker's rules for namespaces and mounts.

    Every rule that allows a call in ``_ADMIN_ONLY`` without conditions loses that call; the calls are then
    allowed only to a process holding CAP_SYS_ADMIN, and refused with EPERM otherwise, as Docker does.
    ``clone`` without CAP_SYS_ADMIN is allowed when it asks for no new namespace (the flags argument is
    the first on every architecture but s390, where it is the second); ``clone3``, whose flags live in
    memory a filter cannot read, fails with ENOSYS so that libc falls back to ``clone``. The rest of the
    profile (its default action included) is podman's, unchanged.
    """
    profile = copy.deepcopy(dict(podman_profile))
    rules: list[dict[str, Any]] = []
    for rule in profile["syscalls"]:
        unconditional = not rule.get("args") and not rule.get("includes") and not rule.get("excludes")
        if rule["action"] == "SCMP_ACT_ALLOW" and unconditional:
            names = [n for n in rule["names"] if n not in _ADMIN_ONLY]
            if not names:
                continue
            rule = {**rule, "names": names}
        rules.append(rule)
    others = sorted(_ADMIN_ONLY - {"clone", "clone3"})
    mask = sum(_CLONE_NEW_FLAGS.values())
    rules.append({"names": sorted(_ADMIN_ONLY), "action": "SCMP_ACT_ALLOW", "includes": _NO_ADMIN})
    rules.append({"names": others, "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM, "excludes": _NO_ADMIN})
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": _ENOSYS,
                  "excludes": _NO_ADMIN})
    for index, arches in ((0, {"excludes": {"arches": ["s390", "s390x"]}}),
                          (1, {"includes": {"arches": ["s390", "s390x"]}})):
        no_admin = {"excludes": {**arches.get("excludes", {}), **_NO_ADMIN}}
        rules.append({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW", **arches, **no_admin,
            "args": [{"index": index, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        })
        for flag in _CLONE_NEW_FLAGS.values():
            rules.append({
                "names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM, **arches, **no_admin,
                "args": [{"index": index, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            })
    profile["syscalls"] = rules
    return profile


def _command_lines() -> Iterator[bytes]:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                yield Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue


def _python_mounts() -> list[Path]:
    """Folders the virtual environment's interpreter needs besides /usr: the checkout, the venv, the
    prefix it was created from."""
    wanted = [REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
              Path(sys.executable).resolve().parent.parent]
    out: list[Path] = []
    for path in wanted:
        if path == Path("/usr") or path.is_relative_to(Path("/usr")):
            continue
        if any(path == p or path.is_relative_to(p) for p in out):
            continue
        out = [p for p in out if not p.is_relative_to(path)]
        out.append(path)
    return out


class Podman:
    """A private podman installation state under one folder, and the containers it runs.

    Build with :meth:`create`; call :meth:`close` (or use the :func:`podman_session` fixture) to remove
    the folder. :meth:`run` is safe to call from one thread at a time.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.interpreter = Path(sys.prefix) / "bin" / "python"
        self.python_mounts = _python_mounts()
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM")},
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
        }
        self.seccomp_files = {"docker": root / "seccomp-docker.json"}
        self.last_seconds = 0.0

    @classmethod
    def create(cls) -> Podman:
        """Write the configuration files in a fresh folder under /tmp.

        /tmp, not pytest's private temporary folders: a uid-mapped container's runtime reaches bound
        folders as a host uid that owns nothing, so their parents must be world-searchable.
        """
        root = Path(tempfile.mkdtemp(prefix="safeload-podman-", dir="/tmp"))
        root.chmod(0o755)
        self = cls(root)
        for sub in ("storage", "run", "tmp", "volumes", "networks", "containers"):
            (root / sub).mkdir(mode=0o700 if sub != "containers" else 0o755)
        (root / "containers.conf").write_text(
            "[containers]\n"
            'netns = "none"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "none"\n'
            f'tmp_dir = "{root / "tmp"}"\n'
            f'volume_path = "{root / "volumes"}"\n'
            "[network]\n"
            # netavark keeps its lock under /run/containers/networks whatever the configuration says;
            # the CNI backend keeps it in the configuration folder (no plugin runs without a network)
            'network_backend = "cni"\n'
            f'network_config_dir = "{root / "networks"}"\n'
        )
        (root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{root / "storage"}"\n'
            f'runroot = "{root / "run"}"\n'
        )
        (root / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.seccomp_files["docker"].write_text(json.dumps(docker_seccomp_profile(podman_seccomp_profile())))
        return self

    def close(self) -> None:
        """Remove the folder, once no process started for it (conmon, podman's clean-up) is left."""
        marker = str(self.root).encode()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(marker in cmd for cmd in _command_lines()):
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def _rootfs(self, folder: Path, config: ContainerConfig, mounts: list[tuple[Path, str, bool]]) -> Path:
        rootfs = folder / "rootfs"
        rootfs.mkdir(mode=0o755)
        for name in ("usr", "etc", "tmp", "proc", "dev", "sys", "run", "root", "home", "var/tmp"):
            (rootfs / name).mkdir(mode=0o755, parents=True)
        (rootfs / "tmp").chmod(0o1777)
        for name in os.listdir("/"):
            if os.path.islink(f"/{name}") and not os.readlink(f"/{name}").startswith("/"):
                (rootfs / name).symlink_to(os.readlink(f"/{name}"))
        users = {"root": (0, 0), "nobody": (65534, 65534)}
        users.setdefault(f"u{config.uid}", (config.uid, config.gid))
        (rootfs / "etc" / "passwd").write_text("".join(
            f"{name}:x:{uid}:{gid}:{name}:/home/user:/bin/sh\n" for name, (uid, gid) in users.items()
            if name == "root" or uid != 0))
        groups = {"root": 0, "nogroup": 65534}
        groups.setdefault(f"g{config.gid}", config.gid)
        (rootfs / "etc" / "group").write_text("".join(f"{n}:x:{g}:\n" for n, g in groups.items()))
        for file in ("passwd", "group"):
            (rootfs / "etc" / file).chmod(0o644)
        for _host, inside, _ro in mounts:
            target = rootfs / inside.lstrip("/")
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
        # mount points' parents (/root for a pyenv prefix) must be searchable by any uid
        for dirpath, dirnames, _files in os.walk(rootfs):
            for d in dirnames:
                p = Path(dirpath) / d
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | 0o755)
        if config.uidmap is not None:
            # as podman does with an image's layers: the runtime creates mount points (/etc/hosts...) as
            # the container's root, which is the mapped host id
            inside, host, count = (int(x) for x in config.uidmap.split(":"))
            for dirpath, dirnames, files in os.walk(rootfs):
                for entry in [Path(dirpath), *(Path(dirpath) / n for n in dirnames + files)]:
                    st = entry.lstat()
                    uid, gid = (host + i - inside if inside <= i < inside + count else i
                                for i in (st.st_uid, st.st_gid))
                    os.lchown(entry, uid, gid)
        return rootfs

    def argv(self, config: ContainerConfig, rootfs: Path, name: str, command: list[str], *,
             mounts: list[tuple[Path, str, bool]], env: Mapping[str, str],
             network: Literal["none", "host"] = "none") -> list[str]:
        """The full ``podman run`` command line."""
        argv = ["podman", "run", "--rm", "--name", name, f"--network={network}", *ULIMITS,
                "--tmpfs", "/tmp:rw,mode=1777",
                "--tmpfs", "/home/user:rw,mode=0700,U"]
        if config.user is not None:
            argv += ["--user", config.user]
        if config.read_only:
            argv += ["--read-only"]
        if config.seccomp == "docker":
            argv += ["--security-opt", f"seccomp={self.seccomp_files['docker']}"]
        elif config.seccomp == "unconfined":
            argv += ["--security-opt", "seccomp=unconfined"]
        if config.uidmap is not None:
            argv += ["--uidmap", config.uidmap, "--gidmap", config.uidmap]
        for host, inside, read_only in mounts:
            argv += ["-v", f"{host}:{inside}:{'ro' if read_only else 'rw'}"]
        # PYTHONPATH: this checkout's safeload, even when the virtual environment's editable install
        # points at another one
        base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/user", "LANG": "C.UTF-8",
                    "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
        for key, value in {**base_env, **env}.items():
            argv += ["--env", f"{key}={value}"]
        argv += [*config.extra, "--rootfs", str(rootfs), *command]
        return argv

    def run(self, config: ContainerConfig, script: str, *,
            mounts: Mapping[Path | str, tuple[str, bool]] | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 180,
            command: list[str] | None = None,
            network: Literal["none", "host"] = "none") -> subprocess.CompletedProcess[str]:
        """Run ``python -c script`` (the virtual environment's interpreter) in a container of ``config``.

        ``mounts`` maps host paths to ``(path in the container, read_only)``, added to the read-only
        /usr, checkout, virtual environment and Python prefix. ``command``, when given, runs instead of
        the interpreter. ``network="host"`` shares the host's network namespace (a server the test started
        on 127.0.0.1 is reachable; no bridge or firewall rule is created). Returns the finished
        ``podman run`` (the container's exit status, its output);
        a container still running after ``timeout`` seconds is removed and ``TimeoutExpired`` raised.
        """
        all_mounts = [(Path("/usr"), "/usr", True)]
        all_mounts += [(p, str(p), True) for p in self.python_mounts]
        all_mounts += [(Path(h), inside, ro) for h, (inside, ro) in (mounts or {}).items()]
        name = f"safeload-test-{secrets.token_hex(6)}"
        folder = self.root / "containers" / name
        folder.mkdir(mode=0o755)
        rootfs = self._rootfs(folder, config, all_mounts)
        cmd = command if command is not None else [str(self.interpreter), "-c", script]
        argv = self.argv(config, rootfs, name, cmd, mounts=all_mounts, env=env or {}, network=network)
        start = time.monotonic()
        try:
            return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            subprocess.run(["podman", "rm", "--force", "--time", "0", name], env=self.env,
                           capture_output=True, check=False, timeout=60)
            raise
        finally:
            self.last_seconds = time.monotonic() - start
            shutil.rmtree(folder, ignore_errors=True)


def podman_session() -> Iterator[Podman]:
    """Body of a session fixture: a :class:`Podman`, or a skip (a failure under ``CI``) without podman.

    Use as ``@pytest.fixture(scope="session")`` ``def podman(): yield from podman_session()``.
    """
    reason = podman_unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"container tests cannot run in CI: {reason}", pytrace=False)
        pytest.skip(f"container tests cannot run here: {reason}")
    podman = Podman.create()
    try:
        yield podman
    finally:
        podman.close()
