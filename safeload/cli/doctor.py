"""``safeload doctor``: what jail this host or container offers, why not a stronger one, and the fix."""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_FINDING, EXIT_OK, UI
from safeload.errors import SandboxUnavailableError

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Report what this host or container offers the jail that opens pickle files: bubblewrap, unprivileged user
namespaces, a /proc that can be mounted fresh, the seccomp filter on this process, the kernel's Landlock
ABI, the uids the jail runs as when started as root, and the store the policy names. Then the jail tier a
load gets under the policy's [sandbox] weakest_jail, and for each stronger tier why it cannot run here and
what would fix it, with the container runtime flags that give the full jail. Run it first in a new
environment. The probe is the one loads use; $SAFELOAD_JAIL does not change the verdict."""

_EPILOG = """\
examples:
  safeload doctor
  safeload doctor --policy /etc/safeload/trust.toml --json

exit codes: 0 a jail at or above the policy's weakest_jail runs here, 1 none does (the reasons and fixes
are printed), 2 error."""

# choose()'s message ends by pointing here; the report is this command's own output.
_SEE_DOCTOR = ". `safeload doctor` explains what this host offers"
_LANDLOCK_NOTES = {4: "TCP rules", 6: "signal and abstract-socket scoping"}


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "doctor",
        help="what jail this host offers, and how to get a stronger one",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    add_policy(parser)
    parser.set_defaults(run=run)


def _bwrap(path: str | None) -> dict[str, Any]:
    if path is None:
        return {"path": None, "version": None}
    try:
        proc = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        version = proc.stdout.strip() or proc.stderr.strip() or None
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"could not run: {exc}"
    return {"path": path, "version": version}


def _jail_ids() -> dict[str, Any]:
    from safeload._jail.privileges import jail_id_range

    try:
        ids = jail_id_range()
    except SandboxUnavailableError as exc:
        return {"first": None, "last": None, "error": str(exc)}
    return {"first": ids.start, "last": ids.stop - 1, "error": None}


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _store_problem(root: Path) -> str | None:
    """The first reason the store's ownership rule refuses the store root or a folder above it."""
    from safeload._trust.store import unsafe_reason

    path, sticky_ok = Path(os.path.realpath(root)), False
    while True:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return f"cannot reach the store {root}: {path}: {exc.strerror}"
        reason = unsafe_reason(path, st, sticky_ok=sticky_ok)
        if reason is not None:
            return reason
        if path.parent == path:
            return None
        path, sticky_ok = path.parent, True


def _store(root: Path) -> dict[str, Any]:
    # The nearest folder that exists: where a missing store would be made.
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    info: dict[str, Any] = {
        "path": str(root),
        "exists": root.exists(),
        "owner": None,
        "mode": None,
        "writable": os.access(existing, os.W_OK),
        "read_only_mount": bool(os.statvfs(existing).f_flag & os.ST_RDONLY),
        "problem": None,
    }
    if root.exists():
        st = os.stat(root)
        info["owner"] = _owner(st.st_uid)
        info["mode"] = f"{stat.S_IMODE(st.st_mode):04o}"
        info["problem"] = _store_problem(root)
    return info


def _verdicts(checks: list[dict[str, Any]]) -> tuple[bool | None, bool | None]:
    """Whether unprivileged user namespaces work and whether /proc is masked, as far as the tiers tell."""
    by_tier = {c["tier"]: c for c in checks}
    full, bare = by_tier.get("full"), by_tier.get("namespaces")
    userns: bool | None = None
    if bare is not None and bare["available"]:
        userns = True
    elif any(c["cause"] in ("seccomp-userns", "sysctl-userns") for c in checks):
        userns = False
    proc_masked: bool | None = None
    if full is not None and full["available"]:
        proc_masked = False
    elif full is not None and full["cause"] == "proc-masked":
        proc_masked = True
    return userns, proc_masked


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._jail import tiers as _tiers

    policy = load_policy(args)
    floor = policy.sandbox.weakest_jail
    checks: list[dict[str, Any]] = []
    landlock_abi = 0
    bwrap_path = shutil.which("bwrap")
    chosen: str | None = None
    problem: str | None = None
    try:
        support = _tiers.support()
    except SandboxUnavailableError as exc:  # the probe itself could not run (no uid to spare for it)
        problem = str(exc)
    else:
        landlock_abi, bwrap_path = support.landlock_abi, support.bwrap
        checks = [
            {"tier": c.tier, "available": c.available, "cause": c.cause, "detail": c.detail, "fix": c.fix}
            for c in support.checks
        ]
        try:
            chosen = support.choose(floor)
        except SandboxUnavailableError as exc:
            problem = str(exc).removesuffix(_SEE_DOCTOR)
    userns, proc_masked = _verdicts(checks)
    data: dict[str, Any] = {
        "policy": str(policy.source) if policy.source else None,
        "floor": floor,
        "chosen": chosen,
        "problem": problem,
        "tiers": checks,
        "landlock_abi": landlock_abi,
        "bwrap": _bwrap(bwrap_path),
        "userns": userns,
        "proc_masked": proc_masked,
        "seccomp_filtered": _tiers.seccomp_filtered(),
        "root": os.geteuid() == 0,
        "jail_ids": _jail_ids(),
        "container": _tiers.in_container(),
        "sysctls": _tiers.userns_sysctls(),
        "jail_env": os.environ.get("SAFELOAD_JAIL") or None,
        "store": _store(policy.store),
        "full_jail_flags": [
            {"runtime": f.runtime, "seccomp": f.seccomp, "proc": f.proc, "note": f.note}
            for f in _tiers.FULL_JAIL_FLAGS
        ],
    }
    ui.emit(data, lambda out: _render(out, data))
    return EXIT_OK if chosen is not None else EXIT_FINDING


def _yes_no(value: bool | None, yes: str, no: str, unknown: str) -> str:
    return unknown if value is None else yes if value else no


def _render(out: Console, d: dict[str, Any]) -> None:
    host = Table(title="this host", title_justify="left", show_header=False)
    host.add_column("what")
    host.add_column("seen")
    bwrap = d["bwrap"]
    host.add_row(
        "bubblewrap",
        f"{bwrap['path']} ({bwrap['version']})" if bwrap["path"] else "not installed (no bwrap on PATH)",
    )
    host.add_row(
        "unprivileged user namespaces",
        _yes_no(d["userns"], "work", "refused", "not probed (needs bubblewrap)"),
    )
    host.add_row(
        "/proc",
        _yes_no(
            d["proc_masked"],
            "masked by the runtime: no fresh /proc can be mounted",
            "a fresh /proc mounts",
            "not probed",
        ),
    )
    host.add_row(
        "seccomp filter on this process",
        "yes (a container runtime's profile)" if d["seccomp_filtered"] else "no",
    )
    abi = d["landlock_abi"]
    extras = ", ".join(note for since, note in sorted(_LANDLOCK_NOTES.items()) if abi >= since)
    host.add_row("Landlock ABI", f"{abi}" + (f" ({extras})" if extras else "") if abi else "none")
    ids = d["jail_ids"]
    id_text = f"{ids['first']}-{ids['last']}" if ids["error"] is None else f"none: {ids['error']}"
    who = f"uid {os.geteuid()}, not root"
    if d["root"]:
        who = f"root: each jail runs as a fresh uid from {id_text}"
    host.add_row("running as", who)
    host.add_row("container", "looks like one" if d["container"] else "no marker of one")
    sysctls = ", ".join(f"{k}={v}" for k, v in d["sysctls"].items()) or "none readable"
    host.add_row("user namespace sysctls", sysctls)
    store = d["store"]
    if store["exists"]:
        store_text = f"{store['path']}: owner {store['owner']}, mode {store['mode']}"
    else:
        store_text = f"{store['path']}: not made yet"
    store_text += ", writable by this user" if store["writable"] else ", read-only for this user"
    if store["read_only_mount"]:
        store_text += ", on a read-only mount"
    host.add_row("store", store_text)
    if store["problem"]:
        host.add_row("store refused", store["problem"])
    out.print(host)

    tiers = Table(title="jail tiers, strongest first", title_justify="left")
    for col in ("tier", "runs here", "why not", "fix"):
        tiers.add_column(col)
    for c in d["tiers"]:
        tiers.add_row(c["tier"], "yes" if c["available"] else "no", c["detail"] or "-", c["fix"] or "-")
    out.print(tiers)

    full = next((c for c in d["tiers"] if c["tier"] == "full"), None)
    if full is not None and not full["available"]:
        flags = Table(
            title="container runtime settings for the full jail (PROFILE.json: the runtime's default seccomp "
            "profile plus unshare, clone with namespace flags, mount, umount2 and pivot_root)",
            title_justify="left",
        )
        for col in ("runtime", "seccomp", "/proc", "note"):
            flags.add_column(col)
        for f in d["full_jail_flags"]:
            flags.add_row(f["runtime"], f["seccomp"], f["proc"], f["note"] or "-")
        out.print(flags)

    source = d["policy"] or "the built-in default policy"
    if d["chosen"] is not None:
        out.print(
            f"loads get the {d['chosen']!r} jail (weakest_jail = {d['floor']!r} in {source})", markup=False
        )
    else:
        out.print(f"refused: {d['problem']}", markup=False)
    if d["jail_env"]:
        out.print(
            f"$SAFELOAD_JAIL={d['jail_env']} is set: loads in this environment ask for that tier instead",
            markup=False,
        )
