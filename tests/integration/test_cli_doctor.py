"""``safeload doctor`` run for real: the probe loads use, on this host, with and without bubblewrap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safeload._jail import tiers as _tiers
from safeload.cli import main
from tests.helpers.trust import write_policy

TIER_KEYS = {"tier", "available", "cause", "detail", "fix"}
TOP_KEYS = {
    "tiers", "chosen", "floor", "landlock_abi", "bwrap", "root", "jail_ids", "seccomp_filtered", "container",
    "sysctls", "store",
}


@pytest.fixture(autouse=True)
def fresh_probe() -> Iterator[None]:
    """Probe again in each test (PATH changes below), and leave no verdict from a changed PATH behind."""
    _tiers.forget()
    yield
    _tiers.forget()


def _policy(tmp_path: Path, weakest_jail: str | None = None) -> Path:
    extra: dict[str, Any] = {"sandbox": {"weakest_jail": weakest_jail}} if weakest_jail else {}
    return write_policy(tmp_path / "trust.toml", store=tmp_path / "store", **extra)


def _doctor(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["doctor", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_report_and_exit_zero_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy(tmp_path)
    code, out, err = _doctor(capsys, "--policy", policy, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert TOP_KEYS <= set(report)
    assert [t["tier"] for t in report["tiers"]] == list(_tiers.TIERS)
    assert all(set(t) == TIER_KEYS for t in report["tiers"])
    support = _tiers.support()
    assert report["chosen"] == support.choose("landlock") and report["floor"] == "landlock"
    assert report["landlock_abi"] == support.landlock_abi
    assert report["bwrap"]["path"] == support.bwrap
    if support.bwrap:
        assert report["bwrap"]["version"].startswith("bubblewrap")
    assert report["store"]["path"] == str(tmp_path / "store")
    assert report["store"]["writable"] is True and report["store"]["read_only_mount"] is False
    assert {f["runtime"] for f in report["full_jail_flags"]} >= {"docker", "podman", "Kubernetes"}
    assert report["policy"] == str(policy)


def test_human_report_names_the_tier_and_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    code, out, err = _doctor(capsys, "--policy", _policy(tmp_path))
    assert code == 0, err
    chosen = _tiers.support().choose("landlock")
    assert f"loads get the {chosen!r} jail" in out
    assert "jail tiers" in out and "Landlock ABI" in out
    assert f"{store}: owner" in out and "mode 0755" in out


def test_store_others_can_write_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o777)
    code, out, _ = _doctor(capsys, "--policy", _policy(tmp_path), "--json")
    assert code == 0  # the verdict is about the jail; the store's problem is reported beside it
    report = json.loads(out)["store"]
    assert report["mode"] == "0777"
    assert "writable by group and others" in report["problem"] and "chmod go-w" in report["problem"]


def test_full_floor_without_bubblewrap_fails_with_the_install_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    policy = _policy(tmp_path, "full")

    code, out, _ = _doctor(capsys, "--policy", policy)
    assert code == 1
    flat = " ".join(out.split())  # rich wraps table cells
    assert "bubblewrap is not installed" in flat
    assert "apt-get install -y bubblewrap" in flat
    assert "refused:" in flat and "weakest_jail" in flat
    assert "systempaths=unconfined" in flat  # the runtime flags table

    code, out, _ = _doctor(capsys, "--policy", policy, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["chosen"] is None and report["floor"] == "full"
    assert report["bwrap"] == {"path": None, "version": None}
    full = report["tiers"][0]
    assert full["tier"] == "full" and not full["available"] and full["cause"] == "no-bwrap"
    assert "apt-get install -y bubblewrap" in full["fix"]
    assert "bubblewrap" in report["problem"]


def test_safeload_jail_does_not_change_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = _policy(tmp_path)
    monkeypatch.delenv("SAFELOAD_JAIL", raising=False)
    _, plain, _ = _doctor(capsys, "--policy", policy, "--json")
    for wanted in ("landlock", "no-such-tier"):
        monkeypatch.setenv("SAFELOAD_JAIL", wanted)
        code, out, _ = _doctor(capsys, "--policy", policy, "--json")
        assert code == 0
        report = json.loads(out)
        assert report["chosen"] == json.loads(plain)["chosen"]
        assert report["jail_env"] == wanted
