"""The jail, attacked from inside with real bubblewrap (run as root, as CI does).

Every payload runs through ``safeload._jail.launcher._run_python_in_jail``: the same command line, seccomp
filter, rlimits and privilege drop as ``run_worker``, with a Python snippet in place of the worker.
Each security claim is tested by a payload that would leave a trace on the host if the claim were
false, and an assertion that it did not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeload._jail import launcher
from safeload._jail import privileges as _privileges
from safeload._jail import seccomp as _seccomp
from safeload._jail import tiers as _tiers
from safeload._jail.launcher import Limits, WorkerRun, run_worker
from safeload.errors import SandboxLimitError, SandboxTimeoutError, SandboxUnavailableError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap jails need Linux")

SYSCALLS = _seccomp.native_arch().syscalls


def jail(code: str, **kwargs: object) -> WorkerRun:
    return launcher._run_python_in_jail(textwrap.dedent(code), **kwargs)  # type: ignore[arg-type]


def jail_json(code: str, **kwargs: object) -> dict[str, object]:
    run = jail(code, **kwargs)
    assert run.returncode == 0, run.stderr
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def host_processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        # setpriv is the launcher's privilege drop: it runs as root by design until it has dropped the ids
        # and exec'd the next program (whose arguments still hold the token), so it is not a jailed process.
        program = os.path.basename(cmdline.split(b"\0")[0])
        if token.encode() in cmdline and state != "Z" and program != b"setpriv":
            found.append(int(entry))
    return found


@pytest.fixture
def host_sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


# --- privileges ------------------------------------------------------------------------------------------


def test_jail_does_not_map_to_host_root(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    token = f"safeload-uid-{secrets.token_hex(8)}"
    host_uids: list[str] = []
    results: list[dict[str, object]] = []

    def run() -> None:
        results.append(jail_json(
            f"""
            import json, os, subprocess, sys, time
            open("/out/suid", "w").write("#!/bin/sh\\n")
            os.chmod("/out/suid", 0o4755)
            subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)", "{token}"])
            print(json.dumps({{"uid": os.getuid(),
                              "caps": [l for l in open("/proc/self/status") if l.startswith("CapEff")]}}))
            """,
            output_dir=out,
        ))

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive() and not host_uids:
        for pid in host_processes_with(token):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                host_uids.append(next(line for line in status.splitlines() if line.startswith("Uid:")))
        time.sleep(0.02)
    thread.join()
    assert results and results[0]["caps"] == ["CapEff:\t0000000000000000\n"]
    assert host_uids, "the jailed process was never seen from the host"
    # Real, effective, saved and file-system uid of the jailed process, as the host kernel sees them.
    real, *others = (int(uid) for uid in host_uids[0].split()[1:])
    assert others == [real] * 3
    if os.geteuid() == 0:
        assert real in _privileges.JAIL_ID_RANGE
    else:
        assert real == os.geteuid()
    assert results[0]["uid"] == real  # the jail's user namespace maps its uid to itself
    # The file the jail made set-uid is handed over as the caller's, with the set-uid bit gone.
    suid = (out / "suid").stat()
    assert suid.st_uid == os.geteuid()
    assert not suid.st_mode & (stat.S_ISUID | stat.S_ISGID)


def test_cannot_write_proc_sys() -> None:
    host_swappiness = Path("/proc/sys/vm/swappiness").read_text()
    new_value = "17" if host_swappiness.strip() != "17" else "18"
    result = jail_json(
        f"""
        import json
        errors = {{}}
        for path, value in (("/proc/sys/vm/swappiness", "{new_value}"),
                            ("/proc/sys/kernel/hostname", "pwned"),
                            ("/proc/sys/vm/drop_caches", "3"), ("/proc/sysrq-trigger", "h")):
            try:
                with open(path, "w") as fh:
                    fh.write(value)
                errors[path] = None
            except OSError as exc:
                errors[path] = exc.errno
        print(json.dumps(errors))
        """
    )
    try:
        assert all(code is not None for code in result.values()), result
        assert result["/proc/sys/vm/swappiness"] in (errno.EROFS, errno.EACCES)
    finally:
        if Path("/proc/sys/vm/swappiness").read_text() != host_swappiness:  # pragma: no cover - a breach
            Path("/proc/sys/vm/swappiness").write_text(host_swappiness)
            pytest.fail("the jail changed the host's vm.swappiness")


def test_sees_no_host_process(host_sleeper: subprocess.Popen[bytes]) -> None:
    result = jail_json(
        f"""
        import json, os
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        comms = [open(f"/proc/{{p}}/comm").read().strip() for p in pids]
        sleeper = os.path.exists("/proc/{host_sleeper.pid}")
        print(json.dumps({{"pids": pids, "comms": comms, "sleeper": sleeper}}))
        """
    )
    assert result["pids"] == ["1"]
    assert "sleep" not in result["comms"]  # type: ignore[operator]
    assert result["sleeper"] is False or host_sleeper.pid == 1


def test_reaches_no_network() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0safeload-test-{secrets.token_hex(8)}"
    abstract.bind(abstract_name)
    abstract.listen(8)
    abstract.settimeout(0.5)
    try:
        result = jail_json(
            f"""
            import json, socket
            out = {{}}
            for name, family in (("inet", socket.AF_INET), ("inet6", socket.AF_INET6)):
                try:
                    s = socket.socket(family, socket.SOCK_STREAM)
                    s.settimeout(1)
                    s.connect(("127.0.0.1", {port}) if family == socket.AF_INET else ("::1", {port}))
                    out[name] = "connected"
                except OSError as exc:
                    out[name] = exc.errno
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect({abstract_name!r})
                out["abstract"] = "connected"
            except OSError as exc:
                out["abstract"] = exc.errno
            print(json.dumps(out))
            """
        )
        assert result["inet"] == errno.EAFNOSUPPORT
        assert result["inet6"] == errno.EAFNOSUPPORT
        # connect() is refused by the seccomp filter; were it allowed, the jail's own network namespace
        # would still hold no socket by the host's abstract name.
        assert result["abstract"] == errno.EPERM
        for server in (listener, abstract):
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        listener.close()
        abstract.close()


def test_sees_no_caller_environment_or_home(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_hex(16)
    monkeypatch.setenv("SAFELOAD_TEST_SECRET", secret)
    home = Path(os.path.expanduser("~"))
    secret_file = home / f".safeload-test-secret-{secrets.token_hex(8)}"
    secret_file.write_text(secret)
    try:
        run = jail(
            f"""
            import os
            print(dict(os.environ))
            print(open("/proc/self/environ", "rb").read())
            for path in ({str(secret_file)!r}, "/root", {str(home)!r}, "/home", "/etc/shadow", "/etc"):
                try:
                    print(path, os.listdir(path) if os.path.isdir(path) else open(path).read())
                except OSError as exc:
                    print(path, "error", exc.errno)
            """
        )
        assert run.returncode == 0, run.stderr
        assert secret not in run.stdout
        assert "SAFELOAD_TEST_SECRET" not in run.stdout
        assert f"{secret_file} error {errno.ENOENT}" in run.stdout
    finally:
        secret_file.unlink()


def open_artifact(tmp_path: Path, kind: str) -> int:
    """The artifact as the loader may hand it over: a file of some mode, or a memfd (sealed or not)."""
    if kind.startswith("memfd"):
        fd = os.memfd_create("artifact", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.write(fd, b"original bytes")
        if kind == "memfd-sealed":
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        return fd
    artifact = tmp_path / "artifact.bin"
    artifact.write_bytes(b"original bytes")
    artifact.chmod(int(kind, 8))
    return os.open(artifact, os.O_RDONLY)


@pytest.mark.parametrize("kind", ["644", "600", "666", "memfd", "memfd-sealed"])
def test_cannot_write_outside_out(tmp_path: Path, kind: str) -> None:
    fd = open_artifact(tmp_path, kind)
    before = os.fstat(fd)
    worker_files = {p: p.stat().st_mtime_ns for p in launcher._WORKER_SRC.rglob("*")}
    canary = f"safeload-canary-{secrets.token_hex(8)}"
    out = tmp_path / "out"
    out.mkdir()
    try:
        result = jail_json(
            f"""
            import json, os
            attempts = {{}}
            def attempt(name, fn):
                try:
                    fn()
                    attempts[name] = "ok"
                except OSError as exc:
                    attempts[name] = exc.errno
            attempt("read", lambda: open("/in/artifact", "rb").read())
            def write(path):
                fd = os.open(path, os.O_RDWR)
                try:
                    os.write(fd, b"PWNED")
                finally:
                    os.close(fd)
            attempt("rw", lambda: write("/in/artifact"))
            attempt("fd-rw", lambda: write("/proc/self/fd/" + str({fd})))
            attempt("truncate", lambda: os.truncate("/in/artifact", 0))
            attempt("chmod", lambda: os.chmod("/in/artifact", 0o777))
            attempt("unlink", lambda: os.unlink("/in/artifact"))
            attempt("root", lambda: open("/{canary}", "w").write("x"))
            attempt("usr", lambda: open("/usr/{canary}", "w").write("x"))
            attempt("worker", lambda: open("/opt/safeload/worker/{canary}", "w").write("x"))
            attempt("dev", lambda: open("/dev/shm/{canary}", "w").write("x"))
            attempt("out", lambda: open("/out/ok", "w").write("x"))
            fds = {{f: os.readlink("/proc/self/fd/" + f) for f in os.listdir("/proc/self/fd")
                    if os.path.exists("/proc/self/fd/" + f)}}
            dirs = [f for f, target in fds.items() if os.path.isdir("/proc/self/fd/" + f)]
            print(json.dumps({{"attempts": attempts, "fds": fds, "dirs": dirs}}))
            """,
            input_fd=fd,
            output_dir=out,
        )
        after = os.fstat(fd)
        assert os.pread(fd, 100, 0) == b"original bytes"
    finally:
        os.close(fd)
    attempts = result["attempts"]
    assert attempts["read"] == "ok"  # type: ignore[index]
    for name in ("rw", "fd-rw", "truncate", "chmod", "unlink", "root", "usr", "worker", "dev"):
        assert attempts[name] != "ok", name  # type: ignore[index]
    assert attempts["out"] == "ok"  # type: ignore[index]
    assert (out / "ok").read_text() == "x"
    # No directory descriptor inherited from the host (only the one listing /proc/self/fd, if any).
    assert len(result["dirs"]) <= 1  # type: ignore[arg-type]
    assert (after.st_mode, after.st_size) == (before.st_mode, 14)
    if not kind.startswith("memfd"):  # a refused write to a sealed memfd still touches its mtime
        assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_uid == before.st_uid
    assert {p: p.stat().st_mtime_ns for p in launcher._WORKER_SRC.rglob("*")} == worker_files
    for root in ("/", "/usr", "/tmp", str(tmp_path)):
        assert not (Path(root) / canary).exists()


# --- seccomp ---------------------------------------------------------------------------------------------


def test_seccomp_rules() -> None:
    n = SYSCALLS
    result = jail_json(
        f"""
        import ctypes, errno, json, os, socket, threading
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        def call(nr, *args):
            ctypes.set_errno(0)
            ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
            return ret if ret >= 0 else -ctypes.get_errno()
        out = {{
            "ptrace": call({n["ptrace"]}, 0, 0, 0, 0),                       # PTRACE_TRACEME
            "unshare_user": call({n["unshare"]}, 0x10000000),
            "unshare_net": call({n["unshare"]}, 0x40000000),
            "mount": call({n["mount"]}, 0, 0, 0, 0, 0),
            "keyctl": call({n["keyctl"]}, 0, (1 << 64) - 3, 0),              # GET_KEYRING_ID(session)
            "bpf": call({n["bpf"]}, 0, 0, 0),
            "perf_event_open": call({n["perf_event_open"]}, 0, 0, 0, 0, 0),
            "userfaultfd": call({n["userfaultfd"]}, 0),
            "process_vm_readv": call({n["process_vm_readv"]}, 1, 0, 0, 0, 0, 0),
            "clone_newnet": call({n["clone"]}, 0x40000000 | 17, 0, 0, 0, 0),
            "clone3": call({n["clone3"]}, 0, 0),
            "io_uring_setup": call({n["io_uring_setup"]}, 1, 0),
            "tiocsti": call({n["ioctl"]}, 0, 0x5412, 0),
            "tiocgwinsz": call({n["ioctl"]}, 0, 0x5413, 0),
            "personality_rie": call({n["personality"]}, 0x0400000),
            "fsopen": call({n["fsopen"]}, 0, 0),
            "setns": call({n["setns"]}, 0, 0),
        }}
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out["socket_inet"] = 0
        except OSError as exc:
            out["socket_inet"] = -exc.errno
        a, b = socket.socketpair()
        out["unix"] = a.send(b"x") == 1 and b.recv(1) == b"x"
        box = []
        t = threading.Thread(target=box.append, args=(1,))
        t.start(); t.join()
        out["thread"] = box == [1]
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitpid(pid, 0)[1] >> 8
        print(json.dumps(out))
        """
    )
    eperm, enosys = -errno.EPERM, -errno.ENOSYS
    for name in ("ptrace", "unshare_user", "unshare_net", "mount", "keyctl", "bpf", "perf_event_open",
                 "userfaultfd", "process_vm_readv", "clone_newnet", "tiocsti", "personality_rie", "fsopen",
                 "setns"):
        assert result[name] == eperm, (name, result[name])
    assert result["clone3"] == enosys
    assert result["io_uring_setup"] == enosys
    assert result["socket_inet"] == -errno.EAFNOSUPPORT
    # Not filtered: the same ioctl family with another request reaches the kernel (no tty: ENOTTY).
    assert result["tiocgwinsz"] == -errno.ENOTTY
    assert result["unix"] is True
    assert result["thread"] is True  # threads start although clone3 is refused (the C library falls back)
    assert result["fork"] == 7


# --- limits ----------------------------------------------------------------------------------------------


def test_timeout_kills_everything_it_started() -> None:
    token = f"safeload-timeout-{secrets.token_hex(8)}"
    seen: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            jail(
                f"""
                import os, subprocess, sys
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        argv = [sys.executable, "-c", "import time; time.sleep(600)", "{token}"]
                        os.execv(sys.executable, argv)
                    os._exit(0)
                while True:
                    pass
                """,
                limits=Limits(timeout_s=2.0),
            )
        except BaseException as exc:
            errors.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive() and not seen:
        seen.extend(host_processes_with(token))
        time.sleep(0.02)
    thread.join()
    elapsed = time.monotonic() - start
    assert seen, "the daemonised grandchild never started, so the test proves nothing"
    assert len(errors) == 1 and isinstance(errors[0], SandboxTimeoutError), errors
    assert "[sandbox] timeout" in str(errors[0])
    assert elapsed < 2.0 + 1.0 + 0.5  # timeout + 1 s, plus start-up on a loaded machine
    assert host_processes_with(token) == []
    for pid in seen:
        stat_file = Path(f"/proc/{pid}/stat")
        assert not stat_file.exists() or stat_file.read_text().rsplit(")")[1].split()[0] == "Z"


def test_memory_limit() -> None:
    limit = 256 << 20
    with pytest.raises(SandboxLimitError, match=r"\[sandbox\] memory"):
        jail(f"b = bytearray({2 * limit})\nprint(len(b))", limits=Limits(memory_bytes=limit))
    with pytest.raises(SandboxLimitError, match=r"\[sandbox\] memory"):
        jail("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))",
             limits=Limits(memory_bytes=limit))


def test_mapping_the_input_does_not_count_as_memory(tmp_path: Path) -> None:
    """The worker maps the whole artifact; a sparse 1 GiB input fits a 256 MiB memory limit."""
    artifact = tmp_path / "big.bin"
    with artifact.open("wb") as fh:
        fh.truncate(1 << 30)
        fh.seek((1 << 30) - 1)
        fh.write(b"\x2a")
    fd = os.open(artifact, os.O_RDONLY)
    try:
        result = jail_json(
            """
            import json, mmap
            with open("/in/artifact", "rb") as fh:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            print(json.dumps({"size": len(data), "last": data[-1]}))
            """,
            input_fd=fd, limits=Limits(memory_bytes=256 << 20),
        )
    finally:
        os.close(fd)
    assert result == {"size": 1 << 30, "last": 0x2A}


def test_file_size_limit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SandboxLimitError, match=r"\[sandbox\] max_output"):
        jail("open('/out/big', 'wb').write(b'x' * (2 << 20))", output_dir=out,
             limits=Limits(max_output_bytes=1 << 20))
    assert list(out.iterdir()) == []


def test_output_total_cap(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SandboxLimitError, match=r"\[sandbox\] max_output"):
        jail(
            "for i in range(6):\n    open(f'/out/part{i}', 'wb').write(b'x' * (512 << 10))",
            output_dir=out, limits=Limits(max_output_bytes=1 << 20),
        )
    assert list(out.iterdir()) == []


def test_tmp_is_size_capped() -> None:
    result = jail_json(
        """
        import json
        try:
            with open("/tmp/fill", "wb") as fh:
                for _ in range(64):
                    fh.write(b"x" * (1 << 20))
            print(json.dumps({"error": None}))
        except OSError as exc:
            print(json.dumps({"error": exc.errno}))
        """,
        limits=Limits(tmp_bytes=8 << 20),
    )
    assert result["error"] == errno.ENOSPC


def test_fork_bomb_is_bounded() -> None:
    if os.geteuid() != 0:
        pytest.skip("covered for root callers; an unprivileged caller's own processes share its budget")
    result = jail_json(
        """
        import json, os, time
        made, refused = 0, 0
        for _ in range(300):
            try:
                pid = os.fork()
            except OSError:
                refused += 1
                continue
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            made += 1
        print(json.dumps({"made": made, "refused": refused}))
        """,
        limits=Limits(processes=64),
    )
    # The host-level count is the run's own uid's, which no other process has; bubblewrap itself counts
    # too, so fewer than 64 may be made, never more.
    assert result["made"] < 64
    assert result["refused"] > 300 - 64


def _live_ids() -> set[int]:
    """Every uid and gid (real, effective, saved, file-system) of every process on the host."""
    ids: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                    if line.startswith(("Uid:", "Gid:")):
                        ids.update(int(x) for x in line.split()[1:])
    return ids


_ID_FIELDS = ("Uid:", "Gid:", "Groups:")


def _watched_jail(found: list[dict[str, object]]) -> threading.Thread:
    """A started thread running a jail that reports its ids, and records how the host sees it."""
    token = f"safeload-ids-{secrets.token_hex(8)}"
    record: dict[str, object] = {"host": set()}
    found.append(record)
    code = f"""
        import json, os, time
        print(json.dumps([os.getresuid(), os.getresgid(), os.getgroups()]), flush=True)
        time.sleep(1.0)  # {token}
        """

    def run() -> None:
        record["inside"] = jail_json(code)  # type: ignore[arg-type]

    def watch() -> None:
        worker = threading.Thread(target=run)
        worker.start()
        seen: set[tuple[str, ...]] = record["host"]  # type: ignore[assignment]
        while worker.is_alive():
            # bubblewrap (whose arguments hold the code) and the jailed interpreter, from the host.
            for pid in host_processes_with(token):
                with contextlib.suppress(OSError):
                    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
                    seen.add(tuple(line.rstrip() for line in lines if line.startswith(_ID_FIELDS)))
            time.sleep(0.02)
        worker.join()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def _check_own_uid(record: dict[str, object], before: set[int], listed: set[int]) -> int:
    (ruid, *uids), (rgid, *gids), groups = record["inside"]  # type: ignore[misc]
    assert uids == [ruid] * 2 and rgid == ruid and gids == [ruid] * 2 and groups == []
    assert record["host"], "the jail was never seen from the host"
    for lines in record["host"]:  # type: ignore[attr-defined]
        assert lines == (f"Uid:\t{ruid}\t{ruid}\t{ruid}\t{ruid}", f"Gid:\t{ruid}\t{ruid}\t{ruid}\t{ruid}",
                         "Groups:"), lines
    assert ruid != 65534 and ruid in _privileges.JAIL_ID_RANGE
    assert ruid not in listed, "the jail ran as a uid or gid of the user database"
    assert ruid not in before, "the jail ran as the uid or gid of a process that was already running"
    return int(ruid)


def test_each_jail_runs_as_a_uid_of_its_own() -> None:
    """Two jails in a row and two at once: each under a uid and gid that nothing else on the host has."""
    if os.geteuid() != 0:
        pytest.skip("started without root, the jail runs as the caller's uid (nothing to drop)")
    listed = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    passwd = Path("/etc/passwd").read_text() + Path("/etc/group").read_text()
    uids = []
    for _ in range(2):
        before = _live_ids()
        found: list[dict[str, object]] = []
        _watched_jail(found).join()
        uids.append(_check_own_uid(found[0], before, listed))
    before = _live_ids()
    found = []
    threads = [_watched_jail(found) for _ in range(2)]
    for thread in threads:
        thread.join()
    uids += [_check_own_uid(record, before, listed) for record in found]
    assert len(set(uids)) == 4, uids
    assert not any(f":{uid}:" in passwd for uid in uids)


# --- availability and speed ------------------------------------------------------------------------------


def _path_without_bwrap(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH with util-linux's prlimit and setpriv, which every tier uses, and no bubblewrap."""
    for tool in ("prlimit", "setpriv"):
        found = shutil.which(tool)
        assert found is not None
        (folder / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(folder))


def test_missing_bwrap_falls_to_the_landlock_jail_unless_the_policy_demands_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _path_without_bwrap(tmp_path, monkeypatch)
    monkeypatch.delenv("SAFELOAD_JAIL", raising=False)
    _tiers.forget()
    try:
        run = jail("import os; print(os.getpid() != 1)")
        assert (run.tier, run.stdout) == ("landlock", "True\n")
        for _ in range(2):  # the second call answers from the cached verdict
            with pytest.raises(SandboxUnavailableError, match="apt-get install -y bubblewrap"):
                jail("print(1)", limits=Limits(weakest_jail="namespaces"))
    finally:
        monkeypatch.undo()
        _tiers.forget()
    run = jail("print(1)", limits=Limits(weakest_jail="full"))
    assert (run.tier, run.stdout) == ("full", "1\n")


def test_prepare_runs_the_first_call_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher.prepare()
    launcher.prepare()  # idempotent
    assert jail("print(2)").stdout == "2\n"
    _path_without_bwrap(tmp_path, monkeypatch)
    monkeypatch.setenv("SAFELOAD_JAIL", "full")
    _tiers.forget()
    try:
        with pytest.raises(SandboxUnavailableError, match="apt-get install -y bubblewrap"):
            launcher.prepare()
    finally:
        monkeypatch.undo()
        _tiers.forget()
    launcher.prepare()


def test_rlimits_are_in_place() -> None:
    limits = Limits(timeout_s=7, memory_bytes=300 << 20, max_output_bytes=5 << 20, open_files=64,
                    processes=400)
    result = jail_json(
        """
        import json, resource
        names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CORE")
        print(json.dumps({n: resource.getrlimit(getattr(resource, n)) for n in names}))
        """,
        limits=limits,
    )
    cpu = 7 * (os.cpu_count() or 1) + 1
    assert result == {
        "RLIMIT_AS": [300 << 20] * 2,
        "RLIMIT_CPU": [cpu, cpu + 2],
        "RLIMIT_NOFILE": [64, 64],
        "RLIMIT_FSIZE": [5 << 20] * 2,
        "RLIMIT_NPROC": [400, 400],
        "RLIMIT_CORE": [0, 0],
    }


@pytest.mark.slow
def test_a_no_op_jail_answers_and_a_trivial_pickle_gets_its_manifest(tmp_path: Path) -> None:
    """What start-up costs is measured by ``python -m bench.jail_tiers``, never asserted here: a busy
    machine makes every timing bound fail sooner or later."""
    for _ in range(3):
        run = jail("print('ready')")
        assert run.stdout == "ready\n", run.stderr
    artifact = tmp_path / "none.pkl"
    artifact.write_bytes(b"\x80\x04N.")
    fd = os.open(artifact, os.O_RDONLY)
    try:
        for i in range(3):
            out = tmp_path / f"out{i}"
            out.mkdir()
            assert run_worker(fd, out).returncode == 0
            assert json.loads((out / "manifest.json").read_text())["root"] == {"t": "none"}
    finally:
        os.close(fd)


@pytest.mark.slow
def test_execute_mode_runs_torch_under_the_filter() -> None:
    result = jail_json(
        """
        import json, torch
        x = torch.arange(1000, dtype=torch.float64).reshape(10, 100)
        print(json.dumps({"sum": float((x @ x.T).trace()), "threads": torch.get_num_threads()}))
        """,
        mode="execute",
        limits=Limits(timeout_s=120),
    )
    assert result["sum"] == float(sum(i * i for i in range(1000)))


@pytest.mark.slow
def test_execute_mode_memory_limit() -> None:
    """torch's reservations fit in the execute-mode headroom; a real over-allocation is a limit error."""
    limit = 1 << 30
    with pytest.raises(SandboxLimitError, match=r"\[sandbox\] memory"):
        jail(
            f"import torch\nx = torch.ones({2 * limit + (4 << 30)} // 4)\nprint(float(x.sum()))",
            mode="execute", limits=Limits(memory_bytes=limit, timeout_s=120),
        )
