"""The weaker jail tiers hold what the full jail holds, and the caller can tell which one ran.

The attack suite runs in every tier (``every_jail_tier``); these tests name, one by one, what a
taken-over worker tries in the two tiers built for containers, and check the tier choice itself: the
floor a policy sets, ``$SAFELOAD_JAIL``, and the audit line.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

import safeload
from safeload._jail import launcher
from safeload._jail import privileges as _privileges
from safeload._jail import tiers as _tiers
from safeload._jail.launcher import Limits
from safeload.errors import SandboxUnavailableError
from safeload.policy import Policy, SandboxSettings

_HOSTILE = textwrap.dedent("""
    import ctypes, json, os, socket, threading
    report = {}
    def attempt(name, fn):
        try:
            fn()
            report[name] = "done"
        except OSError as e:
            report[name] = e.errno
    out = os.environ["SAFELOAD_OUT"]
    attempt("read_passwd", lambda: open("/etc/passwd").read())
    attempt("read_secret", lambda: open(SECRET).read())
    attempt("list_root", lambda: report.__setitem__("root_entries", sorted(os.listdir("/"))))
    attempt("read_proc", lambda: open("/proc/1/environ", "rb").read())
    attempt("write_out", lambda: open(os.path.join(out, "ok"), "w").write("x"))
    attempt("write_victim", lambda: open(VICTIM, "w").write("pwned"))
    attempt("inet_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    attempt("fork", lambda: os._exit(0) if os.fork() == 0 else os.wait())
    attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
    if SOLO:  # the bubblewrap jails may run programs from their read-only /usr; this one runs none
        attempt("exec", lambda: os.execv("/usr/bin/true", ["true"]))
    attempt("setuid_root", lambda: os.setuid(0))
    libc = ctypes.CDLL(None, use_errno=True)
    report["unshare"] = libc.unshare(0x10000000) or "done"
    t = threading.Thread(target=lambda: report.__setitem__("thread", "done"))
    t.start(); t.join()
    report["uid"] = os.getuid()
    print(json.dumps(report))
""")


@pytest.mark.parametrize("tier", ["namespaces", "landlock"])
def test_a_taken_over_worker_is_contained(
    tier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFELOAD_JAIL", tier)
    home = tmp_path / "home"
    home.mkdir()
    secret = home / "secret"
    secret.write_text("SECRET")
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o777)
    victim.chmod(0o777)
    code = (_HOSTILE.replace("SECRET", repr(str(secret))).replace("VICTIM", repr(str(victim / "x")))
            .replace("SOLO", repr(tier == "landlock")))
    out = tmp_path / "out"
    out.mkdir()
    run = launcher._run_python_in_jail(code, output_dir=out)
    assert run.returncode == 0, run.stderr
    assert run.tier == tier
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["write_out"] == "done" and (out / "ok").read_text() == "x"
    assert report["thread"] == "done"
    # The bubblewrap jails' / is a tmpfs of their own; the landlock jail's is the host's, and unreadable.
    assert not {"etc", "home", "root", "var"} & set(report.get("root_entries", [])), report
    for name in ("read_passwd", "read_secret", "read_proc", "write_victim", "inet_socket",
                 "setuid_root", "unshare"):
        assert report[name] != "done", (name, report)
    assert not (victim / "x").exists()
    if tier == "landlock":
        # No pid namespace: the jail is one process that can neither fork nor signal.
        for name in ("list_root", "unix_socket", "fork", "signal_parent", "exec"):
            assert report[name] != "done", (name, report)
    if os.geteuid() == 0:
        assert report["uid"] in _privileges.jail_id_range()


def test_the_policy_floor_and_the_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAFELOAD_JAIL", raising=False)
    assert launcher.jail_tier() == _tiers.support().best() == "full"
    monkeypatch.setenv("SAFELOAD_JAIL", "landlock")
    assert launcher.jail_tier() == "landlock"
    with pytest.raises(SandboxUnavailableError, match="weaker than the policy accepts"):
        launcher.jail_tier("namespaces")
    with pytest.raises(SandboxUnavailableError, match="weaker than the policy accepts"):
        launcher._run_python_in_jail("print(1)", limits=Limits(weakest_jail="full"))
    strict = Policy(store=tmp_path / "store", sandbox=SandboxSettings(weakest_jail="full"))
    with pytest.raises(SandboxUnavailableError):
        safeload.jail_tier(strict)
    monkeypatch.setenv("SAFELOAD_JAIL", "sideways")
    with pytest.raises(SandboxUnavailableError, match="names no jail tier"):
        launcher.jail_tier()


def test_the_audit_line_names_the_tier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.arange(3.0)}, path)
    log = tmp_path / "audit.jsonl"
    policy_file = tmp_path / "trust.toml"
    policy_file.write_text(f'version = 1\nstore = "{tmp_path / "store"}"\naudit_log = "{log}"\n')
    for tier in ("landlock", "full"):
        monkeypatch.setenv("SAFELOAD_JAIL", tier)
        assert safeload.load(path, policy=str(policy_file))["w"].tolist() == [0.0, 1.0, 2.0]
        assert safeload.jail_tier(str(policy_file)) == tier
        assert json.loads(log.read_text().splitlines()[-1])["jail"] == tier
