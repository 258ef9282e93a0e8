"""The handover of the jail's output to the caller, attacked by the worker and by host processes of its uid.

Started as root, the launcher stages the worker's output in a folder uid 65534 owns, in the world-writable
temporary folder, then takes it back (chown, chmod) and moves it into the caller's folder. Any host
process running as ``nobody`` can touch that folder meanwhile; these tests run such a process for real
(``subprocess`` with ``user=65534``) against a real jail and check that root never acts on a host file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeload.errors import SandboxError, SandboxLimitError
from sandbox import _privileges, launcher

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap jails need Linux"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the staging handover happens only when started as root"),
]

UID = _privileges.JAIL_UID

# Waits for the launcher's staging folder, lets bubblewrap bind it, then attacks it.
_ATTACKER = textwrap.dedent("""
    import os, sys, time
    base, victim, how = sys.argv[1:4]
    deadline = time.monotonic() + 30
    names = []
    while not names and time.monotonic() < deadline:
        names = [n for n in os.listdir(base) if n.startswith("safeload-out-")]
        time.sleep(0.005)
    stage = os.path.join(base, names[0])
    time.sleep(0.5)
    if how == "swap":
        os.rename(stage, stage + "-moved")
        os.symlink(victim, stage)
    else:
        os.link(victim, os.path.join(stage, "linked"))
    print("done", flush=True)
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


def _attack(base: Path, victim: Path, how: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    attacker = subprocess.Popen(
        [_privileges.jail_interpreter()[0], "-I", "-S", "-c", _ATTACKER, str(base), str(victim), how],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=UID, group=UID, extra_groups=[],
    )
    try:
        with contextlib.suppress(SandboxError):
            launcher._run_python_in_jail("import time; time.sleep(2.5)", output_dir=out)
            raise AssertionError("the launcher took over a staging folder another process tampered with")
    finally:
        stdout, stderr = attacker.communicate(timeout=60)
    assert stdout.strip() == b"done", stderr.decode()


def test_staging_folder_swapped_for_a_symlink(temp_base: Path, tmp_path: Path) -> None:
    # Before the fix, root chmod-ed the symlink's target, stripped set-id bits below it and moved its
    # entries into the caller's (temporary) folder: any host folder could be emptied this way.
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    precious = victim / "precious"
    precious.write_bytes(b"host file")
    precious.chmod(0o4755)
    _attack(temp_base, victim, "swap", tmp_path)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    assert precious.read_bytes() == b"host file"
    assert stat.S_IMODE(precious.stat().st_mode) == 0o4755
    assert not (tmp_path / "out" / "precious").exists()


def test_host_file_hard_linked_into_the_staging_folder(temp_base: Path, tmp_path: Path) -> None:
    # A file of another owner linked in must not become root's (here: uid 65534's own file).
    victim = temp_base / "victim"
    victim.write_bytes(b"nobody's file")
    os.chown(victim, UID, UID)
    _attack(temp_base, victim, "link", tmp_path)
    assert victim.stat().st_uid == UID
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


def test_input_whose_acl_lets_the_jail_write_it_is_not_handed_over(tmp_path: Path) -> None:
    # Mode 0644 says uid 65534 may only read, but an ACL entry user:65534:rw- lets it write: the jail
    # reopening /in/artifact read-write would then change the caller's own file.
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"original bytes")
    artifact.chmod(0o644)
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 6, UID), (0x04, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF),
               (0x20, 4, 0xFFFFFFFF)]  # user::rw- user:65534:rw- group::r-- mask::rw- other::r--
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(artifact, "system.posix_acl_access", acl)
    except OSError as exc:  # pragma: no cover - a file system without ACLs has nothing to test
        pytest.skip(f"no POSIX ACLs on {tmp_path}: {exc}")
    fd = os.open(artifact, os.O_RDONLY)
    try:
        run = launcher._run_python_in_jail(textwrap.dedent("""
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
    assert artifact.read_bytes() == b"original bytes", run.stdout
