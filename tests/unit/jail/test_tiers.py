"""Tier choice from the probe's verdicts, each refusal's cause and fix, and the ids a namespace spares."""

from __future__ import annotations

import pytest

from safeload._jail import privileges as _privileges
from safeload._jail import tiers as _tiers
from safeload._jail.tiers import JailSupport, TierCheck
from safeload.errors import SandboxUnavailableError


def _support(*available: str) -> JailSupport:
    checks = tuple(
        TierCheck(t, t in available, "" if t in available else "proc-masked", "seen", "the fix")
        for t in _tiers.TIERS
    )
    return JailSupport(checks, 7, "/usr/bin/bwrap")


def test_the_strongest_available_tier_at_or_above_the_floor() -> None:
    assert _support("full", "namespaces", "landlock").choose() == "full"
    assert _support("namespaces", "landlock").choose() == "namespaces"
    assert _support("landlock").choose("landlock") == "landlock"
    assert _support("namespaces", "landlock").choose("namespaces") == "namespaces"
    with pytest.raises(SandboxUnavailableError, match=r"weakest_jail.*full: seen \(the fix\)"):
        _support("namespaces", "landlock").choose("full")
    with pytest.raises(SandboxUnavailableError) as info:
        _support().choose()
    assert str(info.value).count("the fix") == 3 and "safeload doctor" in str(info.value)


@pytest.mark.parametrize(
    ("tier", "stderr", "filtered", "cause"),
    [
        ("full", "bwrap: Can't mount proc on /newroot/proc: Operation not permitted", False, "proc-masked"),
        ("namespaces", "bwrap: No permissions to create new namespace, likely because the kernel does not "
         "allow non-privileged user namespaces.", True, "seccomp-userns"),
        ("namespaces", "bwrap: No permissions to create new namespace", False, "sysctl-userns"),
        ("full", "bwrap: setting up uid map: Permission denied", False, "failed"),
    ],
)
def test_bubblewrap_refusals_name_their_cause(
    tier: _tiers.Tier, stderr: str, filtered: bool, cause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_tiers, "seccomp_filtered", lambda: filtered)
    check = _tiers._classify(tier, stderr)
    assert (check.available, check.cause) == (False, cause)
    assert "install bubblewrap" not in check.fix
    if cause == "seccomp-userns":
        assert "seccomp=PROFILE" in check.fix and "seccomp=unconfined" not in check.fix
    if cause == "proc-masked":
        assert "unmask=/proc/*" in check.fix and "procMount: Unmasked" in check.fix


@pytest.mark.parametrize(
    ("uid_map", "gid_map", "expected"),
    [
        ([(0, 4294967295)], [(0, 4294967295)], _privileges.JAIL_ID_RANGE),
        ([(0, 65536)], [(0, 65536)], range(32768, 65534)),  # rootless podman, userns-remap
        ([(0, 1000), (1000, 64536)], [(0, 65536)], range(33268, 65534)),  # the largest piece's upper half
        ([(0, 200000)], [(0, 100000)], range(50000, 65534)),
    ],
)
def test_jail_ids_come_from_what_the_namespace_maps(
    uid_map: list[tuple[int, int]], gid_map: list[tuple[int, int]], expected: range,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    maps = {"/proc/self/uid_map": uid_map, "/proc/self/gid_map": gid_map}
    monkeypatch.setattr(_privileges, "_id_map", lambda path: maps[path])
    _privileges.jail_id_range.cache_clear()
    try:
        assert _privileges.jail_id_range() == expected
    finally:
        _privileges.jail_id_range.cache_clear()


def test_a_namespace_with_too_few_ids_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_privileges, "_id_map", lambda path: [(0, 1)])
    _privileges.jail_id_range.cache_clear()
    try:
        with pytest.raises(SandboxUnavailableError, match="--uidmap 0:100000:65536"):
            _privileges.jail_id_range()
    finally:
        _privileges.jail_id_range.cache_clear()
