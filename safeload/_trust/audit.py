"""The audit log: one JSON line per load decision, appended atomically.

Each line is a JSON object with at least ``time`` (UTC, ISO 8601), ``mode`` and ``decision``
(``"allow"``, ``"refuse"``, or ``"allow-unpinned"`` for what audit mode let through that enforce mode
would refuse), plus what the caller knows: ``name``, ``registry``, ``repo``, ``revision``, ``files``
(path -> ``"sha256:<hex>"``), ``signer`` / ``signer_identity``, ``source`` (a local path), ``reason``,
and ``jail``: the jail tier this process's jailed work runs in (``full``, ``namespaces`` or ``landlock``;
``none`` where no tier at or above ``[sandbox] weakest_jail`` runs, so every jailed step fails closed).

The line is written with one ``write`` on a descriptor opened with ``O_APPEND``, so lines from several
processes never interleave. If the log cannot be written the load fails with an ``AuditLogError`` (a
serving container promises an audit line for every load).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from safeload.errors import AuditLogError
from safeload.policy import Policy

__all__ = ["record"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _jail(policy: Policy) -> str:
    from safeload._jail.launcher import jail_tier
    from safeload.errors import SandboxUnavailableError

    try:
        return jail_tier(policy.sandbox.weakest_jail)
    except SandboxUnavailableError:
        return "none"


def record(policy: Policy, **fields: object) -> dict[str, object] | None:
    """Append one decision to ``policy.audit_log`` (if set); return the object written.

    Raises:
        AuditLogError: the audit log is set but cannot be appended to (also a ``PolicyError``).
    """
    if policy.audit_log is None:
        return None
    entry: dict[str, object] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "mode": policy.mode,
        "jail": _jail(policy),
        **fields,
    }
    line = (json.dumps(entry, sort_keys=True, default=str, ensure_ascii=False) + "\n").encode()
    path = Path(policy.audit_log)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o640)
        try:
            written = os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        raise AuditLogError(
            f"audit_log: cannot append to {path}: {e}; fix permissions or the setting", path=str(path)
        ) from e
    if written != len(line):
        raise AuditLogError(
            f"audit_log: short write to {path} ({written} of {len(line)} bytes); disk full?", path=str(path)
        )
    return entry
