"""Which jail this host or container can run, strongest first, and why the stronger ones cannot.

Users run where namespaces are refused (DESIGN.md, "Sandbox"), so the jail comes in three tiers:

``full``
    bubblewrap with every namespace, a fresh ``/proc`` (``/proc/sys`` bound read-only over it) and
    ``--disable-userns``. Needs unprivileged user namespaces and a ``/proc`` the runtime does not mask.
``namespaces``
    the same jail with no ``/proc`` at all inside and without ``--disable-userns`` (which needs one); the
    seccomp filter still refuses every new namespace. For runtimes that mask parts of ``/proc`` (every
    container runtime's default), where a fresh procfs cannot be mounted.
``landlock``
    no namespaces: the process confines itself (:mod:`safeload._sandbox.worker._confine`): no-new-privs,
    Landlock
    over the paths the full jail binds, the seccomp filter with no new processes, signals or sockets, a
    spare uid when started as root, rlimits, no inherited descriptors or environment. For runtimes whose
    seccomp profile refuses new namespaces (Docker's default, BuildKit ``RUN``, Kubernetes
    ``RuntimeDefault``).

:func:`support` probes once per process (a bubblewrap start per bubblewrap tier, about 20 ms each, and
only when the stronger tier failed) and :meth:`JailSupport.choose` picks the strongest available tier at
or above the floor a policy sets (``[sandbox] weakest_jail``), or raises
:class:`~safeload.errors.SandboxUnavailableError` naming the cause and the fix of each refused tier.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Literal

from safeload.errors import SandboxUnavailableError

__all__ = [
    "FULL_JAIL_FLAGS",
    "TIERS",
    "JailSupport",
    "RuntimeFlags",
    "Tier",
    "TierCheck",
    "forget",
    "in_container",
    "seccomp_filtered",
    "support",
    "userns_sysctls",
]

Tier = Literal["full", "namespaces", "landlock"]
TIERS: tuple[Tier, ...] = ("full", "namespaces", "landlock")

_FIX_BWRAP = "install bubblewrap: apt-get install -y bubblewrap (dnf install bubblewrap, apk add bubblewrap)"


@dataclass(frozen=True)
class RuntimeFlags:
    """How one container runtime is told to let the full jail run: a seccomp profile that lets it create
    namespaces (``seccomp``) and a ``/proc`` the runtime does not mask (``proc``)."""

    runtime: str
    seccomp: str
    proc: str
    note: str = ""


# PROFILE.json: the runtime's default profile plus unshare, clone with namespace flags, mount, umount2 and
# pivot_root. `safeload doctor` prints this table; the fixes below are written from it.
FULL_JAIL_FLAGS: tuple[RuntimeFlags, ...] = (
    RuntimeFlags("docker", "--security-opt seccomp=PROFILE.json", "--security-opt systempaths=unconfined"),
    RuntimeFlags("podman", "--security-opt seccomp=PROFILE.json", "--security-opt unmask=/proc/*"),
    RuntimeFlags(
        "Kubernetes",
        "securityContext.seccompProfile: {type: Localhost, localhostProfile: PROFILE.json}",
        "securityContext.procMount: Unmasked",
        "with hostUsers: false in the Pod spec",
    ),
    RuntimeFlags(
        "BuildKit RUN",
        "RUN --security=insecure",
        "RUN --security=insecure",
        "a privileged step: docker buildx build --allow security.insecure, on a builder that allows the "
        "security.insecure entitlement",
    ),
)
_PROFILE_NEEDS = (
    "a seccomp profile that allows unshare, clone with namespace flags, mount, umount2 and pivot_root"
)


def _flags(f: RuntimeFlags, *parts: str) -> str:
    text = " ".join(dict.fromkeys(parts))  # BuildKit's one flag does both
    return f"{f.runtime}: {text}" + (f" ({f.note})" if f.note else "")


_FIX_SECCOMP = (
    "the container's seccomp profile refuses new user namespaces (Docker's default profile, a BuildKit RUN "
    f"step and Kubernetes RuntimeDefault do). For the full jail run it with {_PROFILE_NEEDS} (PROFILE.json) "
    "plus an unmasked /proc: "
    + "; ".join(_flags(f, f.seccomp, f.proc) for f in FULL_JAIL_FLAGS)
    + ". The landlock tier needs none of this"
)
_FIX_SYSCTL = (
    "the kernel refuses unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 (Debian), "
    "sysctl -w user.max_user_namespaces=15000, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 "
    "(Ubuntu 24.04+)"
)
_FIX_PROC = (
    "the container runtime masks parts of /proc, so no fresh /proc can be mounted: "
    + "; ".join(_flags(f, f.proc) for f in FULL_JAIL_FLAGS)
)
_FIX_LANDLOCK = (
    "the kernel offers no Landlock: it needs Linux 5.13 or later with landlock in its lsm= boot list "
    "(cat /sys/kernel/security/lsm)"
)


@dataclass(frozen=True)
class TierCheck:
    """One tier's verdict on this host: whether it runs, and if not what was seen and what would fix it."""

    tier: Tier
    available: bool
    cause: str = ""  # "no-bwrap", "seccomp-userns", "sysctl-userns", "proc-masked", "no-landlock", "failed"
    detail: str = ""
    fix: str = ""


@dataclass(frozen=True)
class JailSupport:
    """Every tier's verdict, strongest first, and the Landlock ABI the kernel offers."""

    checks: tuple[TierCheck, ...]
    landlock_abi: int
    bwrap: str | None

    def check(self, tier: Tier) -> TierCheck:
        return next(c for c in self.checks if c.tier == tier)

    def best(self) -> Tier | None:
        """The strongest tier that runs here, or None."""
        return next((c.tier for c in self.checks if c.available), None)

    def choose(self, floor: Tier = "landlock") -> Tier:
        """The strongest available tier no weaker than ``floor``.

        Raises:
            SandboxUnavailableError: no tier at or above ``floor`` runs here; the message names each
                refused tier's cause and fix.
        """
        allowed = TIERS[: TIERS.index(floor) + 1]
        for c in self.checks:
            if c.tier in allowed and c.available:
                return c.tier
        reasons = "; ".join(
            f"{c.tier}: {c.detail} ({c.fix})" for c in self.checks if c.tier in allowed
        )
        floor_note = (
            f" The policy accepts no jail weaker than {floor!r} ([sandbox] weakest_jail)."
            if floor != "landlock" else ""
        )
        raise SandboxUnavailableError(
            f"no jail can run here, and safeload never opens pickle files outside one.{floor_note} "
            f"{reasons}. `safeload doctor` explains what this host offers"
        )


_cached: JailSupport | None = None
_lock = threading.Lock()


def support() -> JailSupport:
    """Probe the tiers once per process (restart it after changing the host or container)."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = _probe()
        return _cached


def forget() -> None:
    """Drop the cached verdicts (tests that change PATH)."""
    global _cached
    with _lock:
        _cached = None


def _probe() -> JailSupport:
    from safeload._sandbox.worker._confine import landlock_abi

    from .privileges import drop_privileges, fresh_jail_ids

    abi = landlock_abi()
    bwrap = shutil.which("bwrap")
    checks: list[TierCheck] = []
    if bwrap is None:
        missing = "bubblewrap is not installed"
        checks += [TierCheck(t, False, "no-bwrap", missing, _FIX_BWRAP) for t in ("full", "namespaces")]
    else:
        ids = fresh_jail_ids() if drop_privileges() else None
        full = _run_bwrap(bwrap, ids, fresh_proc=True)
        if full is None:
            checks.append(TierCheck("full", True))
            checks.append(TierCheck("namespaces", True))
        else:
            checks.append(_classify("full", full))
            bare = _run_bwrap(bwrap, ids, fresh_proc=False)
            checks.append(TierCheck("namespaces", True) if bare is None else _classify("namespaces", bare))
    if abi >= 1:
        checks.append(TierCheck("landlock", True))
    else:
        absent = "the kernel offers no Landlock"
        checks.append(TierCheck("landlock", False, "no-landlock", absent, _FIX_LANDLOCK))
    return JailSupport(tuple(checks), abi, bwrap)


def _run_bwrap(bwrap: str, ids: object, *, fresh_proc: bool) -> str | None:
    """None when bubblewrap builds this tier's namespaces, else what it printed."""
    cmd = [bwrap, "--unshare-all", "--unshare-user"]
    if fresh_proc:
        cmd += ["--disable-userns"]
    cmd += [
        "--die-with-parent", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
    ]
    if fresh_proc:
        cmd += ["--proc", "/proc"]
    cmd += ["--", "/usr/bin/true"]
    kwargs: dict[str, object] = {}
    if ids is not None:
        kwargs = {"user": ids.uid, "group": ids.gid, "extra_groups": []}  # type: ignore[attr-defined]
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=30, check=False, **kwargs,  # type: ignore[call-overload]
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not run {bwrap}: {exc}"
    if proc.returncode == 0:
        return None
    return proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"


def _classify(tier: Tier, stderr: str) -> TierCheck:
    seen = f"bubblewrap: {stderr.removeprefix('bwrap: ')[:300]}"
    if "proc" in stderr.lower() and tier == "full":
        return TierCheck(tier, False, "proc-masked", seen, _FIX_PROC)
    if "namespace" in stderr or "Operation not permitted" in stderr:
        if seccomp_filtered():
            return TierCheck(tier, False, "seccomp-userns", seen, _FIX_SECCOMP)
        return TierCheck(tier, False, "sysctl-userns", seen, _FIX_SYSCTL)
    return TierCheck(tier, False, "failed", seen, "see bubblewrap's message")


@functools.cache
def seccomp_filtered() -> bool:
    """Whether a seccomp filter (a container runtime's profile) is on this process."""
    return _status_field("Seccomp") == "2"


def _status_field(name: str) -> str:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def userns_sysctls() -> dict[str, str]:
    """The kernel settings that gate unprivileged user namespaces, as far as they are readable."""
    out: dict[str, str] = {}
    for name in (
        "kernel/unprivileged_userns_clone", "user/max_user_namespaces",
        "kernel/apparmor_restrict_unprivileged_userns",
    ):
        try:
            with open(f"/proc/sys/{name}", encoding="ascii") as fh:
                out[name.replace("/", ".")] = fh.read().strip()
        except OSError:
            continue
    return out


def in_container() -> bool:
    """Whether this process looks like it runs in a container (the runtimes' marker files)."""
    return any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv")) or bool(
        os.environ.get("KUBERNETES_SERVICE_HOST")
    )
