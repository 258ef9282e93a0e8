"""The handover of the jail's output to the caller, attacked by the worker and by other host processes.

Started as root, the launcher stages the worker's output in a folder in the world-writable temporary
folder, owned by a uid and gid drawn for that run alone, then takes it back (chown, chmod) and moves it
into the caller's folder. These tests run real host processes (``subprocess`` with ``user=``) against a
real running jail: as ``nobody`` and as the uid of an earlier jail (outsiders, which a shared jail uid
would have let in), they must be refused everything; as the run's own uid (which only root could start
outside the jail), the handover must still never act on a host file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeload._jail import launcher
from safeload._jail import privileges as _privileges
from safeload.errors import SandboxError, SandboxLimitError

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap jails need Linux"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the staging handover happens only when started as root"),
]

NOBODY = 65534
OUTSIDERS = ["nobody", "previous-jail"]

# Given a running jail's staging folder, tries everything an unrelated process might do to the jail.
_PROBE = textwrap.dedent("""
    import json, os, signal, sys
    stage = sys.argv[1]
    owner = os.lstat(stage).st_uid
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            lines = open(f"/proc/{name}/status").read().splitlines()
        except OSError:
            continue
        if any(line.split()[:2] == ["Uid:", str(owner)] for line in lines):
            pids.append(int(name))
    def attempt(fn):
        try:
            fn()
            return "done"
        except OSError as exc:
            return exc.strerror
    out = {"pids": len(pids)}
    for pid in pids:
        out[f"enter {pid}"] = attempt(lambda: os.close(os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)))
        out[f"read memory {pid}"] = attempt(lambda: os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY)))
        out[f"kill {pid}"] = attempt(lambda: os.kill(pid, signal.SIGKILL))
    out["list"] = attempt(lambda: os.listdir(stage))
    out["open for write"] = attempt(lambda: os.close(os.open(os.path.join(stage, "result"), os.O_WRONLY)))
    out["truncate"] = attempt(lambda: os.truncate(os.path.join(stage, "result"), 0))
    out["rename"] = attempt(lambda: os.rename(stage, stage + "-moved"))
    print(json.dumps(out), flush=True)
""")

# Given a running jail's staging folder, swaps it for a symlink or links a host file into it.
_TAMPER = textwrap.dedent("""
    import os, sys
    stage, victim, how = sys.argv[1:4]
    try:
        if how == "swap":
            os.rename(stage, stage + "-moved")
            os.symlink(victim, stage)
        else:
            os.link(victim, os.path.join(stage, "linked"))
        print("done", flush=True)
    except OSError as exc:
        print("refused", exc.strerror, flush=True)
""")

# The jail: leaves an output file anyone could write, then stays up while it is attacked.
_JAIL = textwrap.dedent("""
    import os, time
    with open("/out/result", "wb") as f:
        f.write(b"the jail's output")
    os.chmod("/out/result", 0o666)
    time.sleep(1.5)
    print("finished")
""")


@pytest.fixture
def temp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private temporary folder like /tmp (world-writable, sticky) for the launcher's staging folder."""
    del tmp_path  # made first: pytest places it under the temporary folder of its first use
    base = Path(tempfile.mkdtemp(prefix="safeload-handover-", dir="/tmp"))
    base.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _previous_jail_uid() -> int:
    run = launcher._run_python_in_jail("import os; print(os.getuid())")
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


class _Jail:
    """A jail running :data:`_JAIL` in a thread, and its staging folder once it is bound."""

    def __init__(self, base: Path, out: Path) -> None:
        self.run: launcher.WorkerRun | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(out,))
        self._thread.start()
        deadline = time.monotonic() + 30
        names: list[str] = []
        while not names and time.monotonic() < deadline:
            names = [n for n in os.listdir(base) if n.startswith("safeload-out-")]
            time.sleep(0.005)
        assert names, "the launcher made no staging folder"
        self.stage = base / names[0]
        self.owner = self.stage.lstat().st_uid
        time.sleep(0.4)  # bubblewrap has bound it and the jail has written its output

    def _main(self, out: Path) -> None:
        try:
            self.run = launcher._run_python_in_jail(_JAIL, output_dir=out)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join()


def _as(uid: int, script: str, *args: str) -> str:
    proc = subprocess.run(
        [_privileges.jail_interpreter()[0], "-I", "-S", "-c", script, *args],
        capture_output=True, user=uid, group=uid, extra_groups=[], timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().strip()


@pytest.mark.parametrize("who", OUTSIDERS)
def test_outsider_cannot_reach_a_running_jail(who: str, temp_base: Path, tmp_path: Path) -> None:
    # With one uid for every jail (65534 before), the same probe killed the jail, entered its
    # namespaces, and rewrote or renamed its output before the handover.
    previous = _previous_jail_uid() if who == "previous-jail" else NOBODY
    out = tmp_path / "out"
    out.mkdir()
    jail = _Jail(temp_base, out)
    try:
        assert jail.owner != previous
        report = json.loads(_as(previous, _PROBE, str(jail.stage)))
    finally:
        jail.join()
    assert report["pids"] >= 2, report  # bubblewrap and the jail's pid 1, seen from outside
    succeeded = [what for what, outcome in report.items() if outcome == "done"]
    assert not succeeded, report
    assert jail.error is None and jail.run is not None, jail.error
    assert jail.run.returncode == 0 and jail.run.stdout == "finished\n", jail.run.stderr
    assert (out / "result").read_bytes() == b"the jail's output"


def _tamper(who: str, base: Path, victim: Path, how: str, tmp_path: Path) -> int:
    """Attack a running jail's staging folder as ``who``; returns the uid the attack ran as."""
    uid = _previous_jail_uid() if who == "previous-jail" else NOBODY
    out = tmp_path / "out"
    out.mkdir()
    jail = _Jail(base, out)
    try:
        if who == "own":
            uid = jail.owner
        else:
            assert jail.owner != uid
        if how == "link":  # the victim is the attacker's own file, which the kernel lets it link
            os.chown(victim, uid, uid)
        answer = _as(uid, _TAMPER, str(jail.stage), str(victim), how)
    finally:
        jail.join()
    if who == "own":
        # Only root could start a host process as the run's uid; if one did, the handover still
        # refuses to take over a tampered staging folder or a file linked in.
        assert answer == "done"
        assert isinstance(jail.error, SandboxError), jail.run
    else:
        assert answer.startswith("refused"), answer
        assert jail.error is None and jail.run is not None, jail.error
        assert jail.run.returncode == 0, jail.run.stderr
        assert (out / "result").read_bytes() == b"the jail's output"
    return uid


@pytest.mark.parametrize("who", [*OUTSIDERS, "own"])
def test_staging_folder_swapped_for_a_symlink(who: str, temp_base: Path, tmp_path: Path) -> None:
    # Before the handover was hardened, root chmod-ed the symlink's target, stripped set-id bits below
    # it and moved its entries into the caller's (temporary) folder: any host folder could be emptied.
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    precious = victim / "precious"
    precious.write_bytes(b"host file")
    precious.chmod(0o4755)
    _tamper(who, temp_base, victim, "swap", tmp_path)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    assert precious.read_bytes() == b"host file"
    assert stat.S_IMODE(precious.stat().st_mode) == 0o4755
    assert not (tmp_path / "out" / "precious").exists()


@pytest.mark.parametrize("who", [*OUTSIDERS, "own"])
def test_host_file_hard_linked_into_the_staging_folder(who: str, temp_base: Path, tmp_path: Path) -> None:
    # A file of another owner linked in must not become root's (here: the attacker's own file).
    victim = temp_base / "victim"
    victim.write_bytes(b"the attacker's file")
    uid = _tamper(who, temp_base, victim, "link", tmp_path)
    assert victim.stat().st_uid == uid
    assert victim.read_bytes() == b"the attacker's file"
    assert not (tmp_path / "out" / "linked").exists()


def test_output_is_not_left_writable_by_others(tmp_path: Path) -> None:
    run = launcher._run_python_in_jail(textwrap.dedent("""
        import os
        os.mkdir("/out/d")
        os.chmod("/out/d", 0o1777)
        with open("/out/d/f", "wb") as f:
            f.write(b"x")
        os.chmod("/out/d/f", 0o2766)
        with open("/out/top", "wb") as f:
            f.write(b"y")
        os.chmod("/out/top", 0o666)
    """), output_dir=tmp_path)
    assert run.returncode == 0, run.stderr
    for path in (tmp_path / "d", tmp_path / "d" / "f", tmp_path / "top"):
        st = path.lstat()
        assert st.st_uid == os.geteuid()
        unsafe = stat.S_IWGRP | stat.S_IWOTH | stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
        assert not st.st_mode & unsafe, path


def test_output_nested_past_path_max_is_counted(tmp_path: Path) -> None:
    # Paths longer than PATH_MAX could not be walked by path, so bytes written below them escaped the
    # output cap while the worker ran (filling the host's disk) until the timeout.
    code = textwrap.dedent("""
        import os, time
        os.chdir("/out")
        for _ in range(40):
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
        for i in range(8):  # each file under the per-file limit, together over the total
            with open(f"part{i}", "wb") as f:
                f.write(b"x" * (512 << 10))
        time.sleep(30)
    """)
    limits = launcher.Limits(timeout_s=10, max_output_bytes=1 << 20)
    with pytest.raises(SandboxLimitError, match="over the cap"):
        launcher._run_python_in_jail(code, output_dir=tmp_path, limits=limits)


def test_input_whose_acl_lets_the_jail_write_it_is_not_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mode 0644 says the jail's uid may only read, but an ACL entry user:<that uid>:rw- lets it write:
    # the jail reopening /in/artifact read-write would then change the caller's own file. The run's
    # uid is random, so the test makes the next draw the one its ACL names.
    uid = _privileges.JAIL_ID_RANGE.start + secrets.randbelow(len(_privileges.JAIL_ID_RANGE))
    draws = [uid]
    real_draw = _privileges._candidate
    monkeypatch.setattr(_privileges, "_candidate", lambda: draws.pop() if draws else real_draw())
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"original bytes")
    artifact.chmod(0o644)
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 6, uid), (0x04, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF),
               (0x20, 4, 0xFFFFFFFF)]  # user::rw- user:<uid>:rw- group::r-- mask::rw- other::r--
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(artifact, "system.posix_acl_access", acl)
    except OSError as exc:  # pragma: no cover - a file system without ACLs has nothing to test
        pytest.skip(f"no POSIX ACLs on {tmp_path}: {exc}")
    fd = os.open(artifact, os.O_RDONLY)
    try:
        run = launcher._run_python_in_jail(textwrap.dedent("""
            import os
            print(os.getuid())
            try:
                with open("/in/artifact", "r+b") as f:
                    f.write(b"PWNED")
                print("wrote")
            except OSError as exc:
                print("refused", exc)
        """), input_fd=fd)
    finally:
        os.close(fd)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[0] == str(uid), "the jail did not run as the uid the ACL names"
    assert artifact.read_bytes() == b"original bytes", run.stdout


_KILLED_CALLER = r"""
import sys, tempfile
sys.path.insert(0, sys.argv[1])
tempfile.tempdir = sys.argv[2]
from safeload._jail import launcher
launcher._run_python_in_jail("import time; time.sleep(60)")
"""

_NEXT_CALLER = r"""
import sys, tempfile
sys.path.insert(0, sys.argv[1])
tempfile.tempdir = sys.argv[2]
from safeload._jail import launcher
assert launcher._run_python_in_jail("print(1)").stdout == "1\n"
"""


def test_a_killed_callers_staging_folder_is_swept_by_the_next_process(temp_base: Path) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    caller = subprocess.Popen([sys.executable, "-c", _KILLED_CALLER, repo, str(temp_base)])
    try:
        deadline = time.monotonic() + 30
        left: list[Path] = []
        while not left and time.monotonic() < deadline:
            left = [p for p in temp_base.iterdir() if p.name.startswith("safeload-out-")
                    and p.stat().st_uid in _privileges.JAIL_ID_RANGE]
            time.sleep(0.05)
        assert left, "the jail never started"
        time.sleep(0.3)
    finally:
        caller.kill()  # SIGKILL: no clean-up runs; bubblewrap's --die-with-parent ends the jail
        caller.wait()
    assert all(p.exists() for p in left)  # what a killed caller leaves behind
    subprocess.run([sys.executable, "-c", _NEXT_CALLER, repo, str(temp_base)], check=True, timeout=60)
    assert not any(p.exists() for p in left)
