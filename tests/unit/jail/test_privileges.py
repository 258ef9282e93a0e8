"""Which uid each jail runs as, and which host paths and inodes that uid may use."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from safeload._jail import privileges as priv

# Any uid of the range: the jail's uid owns nothing, so what matters is "a uid other than the owner".
UID = GID = priv.JAIL_ID_RANGE.start + 4242
NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="files and processes of other uids need root")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder directly under the system temporary folder (pytest's own is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="safeload-reach-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _unissued() -> int:
    """A number of the range this process has not handed out yet."""
    while True:
        n = priv.JAIL_ID_RANGE.start + secrets.randbelow(len(priv.JAIL_ID_RANGE))
        if n not in priv._issued:
            return n


@pytest.fixture
def draws(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make the next draws of the random source return the given numbers, then random ones again."""

    def force(*numbers: int) -> None:
        queue = list(numbers)
        real = priv._candidate
        monkeypatch.setattr(priv, "_candidate", lambda: queue.pop(0) if queue else real())

    return force


# --- the run's ids -----------------------------------------------------------------------------------------


def _live_ids() -> set[int]:
    ids: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines = Path(f"/proc/{entry}/status").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith(("Uid:", "Gid:")):
                    ids.update(int(x) for x in line.split()[1:])
    return ids


def test_fresh_ids_are_distinct_unlisted_and_unused() -> None:
    listed = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    live = _live_ids()
    drawn = [priv.fresh_jail_ids() for _ in range(50)]
    uids = [ids.uid for ids in drawn]
    assert len(set(uids)) == len(uids)
    for ids in drawn:
        assert ids.gid == ids.uid
        assert ids.uid in priv.JAIL_ID_RANGE
        assert ids.uid not in listed and ids.uid not in live
    assert NOBODY not in uids


def test_a_number_drawn_before_is_never_handed_out_again(draws: Callable[..., None]) -> None:
    first, second = _unissued(), _unissued()
    draws(first)
    assert priv.fresh_jail_ids().uid == first
    draws(first, second)
    assert priv.fresh_jail_ids().uid == second


def test_ids_listed_in_the_user_or_group_database_are_skipped(draws: Callable[..., None]) -> None:
    fresh = _unissued()
    draws(0, NOBODY, fresh)  # root and nobody stand in for listed ids of the range on a real host
    assert priv.fresh_jail_ids().uid == fresh


def test_ids_delegated_as_subordinate_ids_are_skipped(
    draws: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delegated, fresh = _unissued(), _unissued()
    subgid = tmp_path / "subgid"
    subgid.write_text(f"# comment\nbroken line\nalice:{delegated - 10}:65536\n")
    monkeypatch.setattr(priv, "_SUBID_FILES", (str(tmp_path / "subuid-missing"), str(subgid)))
    draws(delegated, fresh)
    assert priv.fresh_jail_ids().uid == fresh


@needs_root
def test_ids_of_a_live_process_are_skipped(draws: Callable[..., None]) -> None:
    held, held_gid, fresh = _unissued(), _unissued(), _unissued()
    proc = subprocess.Popen(["sleep", "30"], user=held, group=held_gid, extra_groups=[])
    try:
        draws(held, held_gid, fresh)
        assert priv.fresh_jail_ids().uid == fresh
    finally:
        proc.kill()
        proc.wait()


@needs_root
def test_ids_owning_an_entry_of_the_staging_base_are_skipped(
    draws: Callable[..., None], open_dir: Path
) -> None:
    owner, group, fresh = _unissued(), _unissued(), _unissued()
    left = open_dir / "left-over"
    left.write_bytes(b"")
    os.chown(left, owner, group)
    draws(owner, group, fresh)
    assert priv.fresh_jail_ids(str(open_dir)).uid == fresh


@needs_root
def test_staging_folder_is_the_runs_and_claimed_by_name(
    draws: Callable[..., None], open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_dir.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(open_dir))
    taken, fresh = _unissued(), _unissued()
    # Another process that drew the same number got there first: its folder is root's until it
    # chowns it, so only the name tells.
    (open_dir / f"safeload-out-{taken}").mkdir()
    draws(taken, fresh)
    ids, path, fd = priv.claim_staging()
    try:
        assert ids == priv.JailIds(fresh, fresh)
        assert path == open_dir / f"safeload-out-{fresh}"
        st = os.fstat(fd)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (fresh, fresh, 0o700)
        assert os.path.samestat(st, path.lstat())
    finally:
        os.close(fd)


# --- what a stranger may reach -----------------------------------------------------------------------------


def test_reachable_needs_search_permission_on_every_parent(open_dir: Path) -> None:
    outer = open_dir / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    target = inner / "file"
    target.write_text("x")
    outer.chmod(0o755)
    inner.chmod(0o755)
    assert priv.reachable(target)
    assert priv.reachable(target, uid=UID, gid=GID)
    outer.chmod(0o700)
    assert not priv.reachable(target)
    assert not priv.reachable(target, uid=UID, gid=GID)
    outer.chmod(0o710)  # group-searchable only: a stranger is in no group
    assert not priv.reachable(target)
    assert priv.reachable(target, uid=UID, gid=os.stat(outer).st_gid)
    outer.chmod(0o755)
    inner.chmod(0o750)  # the last folder counts too
    assert not priv.reachable(target)


def test_a_stranger_is_not_the_owner(open_dir: Path) -> None:
    target = open_dir / "odd" / "file"
    target.parent.mkdir()
    owner = os.stat(target.parent).st_uid
    target.parent.chmod(0o601)  # others may search, the owner may not
    assert priv.reachable(target)
    assert not priv.reachable(target, uid=owner, gid=-1)
    target.parent.chmod(0o710)  # the owner and its group may search, others may not
    assert not priv.reachable(target)


def test_root_only_home_is_not_reachable() -> None:
    root_home = Path("/root")
    if not root_home.exists() or root_home.stat().st_mode & stat.S_IXOTH:
        pytest.skip("/root is searchable by others here")
    assert not priv.reachable(root_home / "anything")


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [
        (0o444, "root", True),   # a read-only store blob
        (0o644, "root", True),
        (0o600, "root", False),  # unreadable: copied
        (0o666, "root", False),  # writable by others: copied
        (0o664, "group", False),  # writable through the group
        (0o644, "user", False),  # the jail's uid owns it and may write it
        (0o444, "user", True),
    ],
)
def test_readable_input(tmp_path: Path, mode: int, owner: str, expected: bool) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    if owner != "root":
        if os.geteuid() != 0:
            pytest.skip("needs root to chown")
        os.chown(path, UID if owner == "user" else -1, GID if owner == "group" else -1)
    path.chmod(mode)
    assert priv.readable_input(path.stat(), UID, GID) is expected


@pytest.mark.parametrize(("mode", "expected"), [(0o444, True), (0o604, True), (0o640, False), (0o646, False)])
def test_readable_input_for_a_stranger(tmp_path: Path, mode: int, expected: bool) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    path.chmod(mode)
    assert priv.readable_input(path.stat()) is expected


def test_interpreter_is_reachable_by_the_jail() -> None:
    python, prefix = priv.jail_interpreter()
    assert Path(python).exists()
    assert python.startswith(prefix.rstrip("/") + "/")
    if priv.drop_privileges():
        assert priv.reachable(python)


def test_sweep_removes_what_killed_runs_left_and_nothing_else(tmp_path: Path) -> None:
    import fcntl

    base = tmp_path / "tmp"
    base.mkdir()
    base.chmod(0o1777)
    root = os.geteuid() == 0  # only root stages through jail-owned folders, and only root can make them

    def staging(uid: int, owner: int | None = None) -> Path:
        path = base / f"safeload-out-{uid}"
        path.mkdir(mode=0o700)
        if root:
            os.chown(path, uid if owner is None else owner, uid if owner is None else owner)
        return path

    ids = [priv.fresh_jail_ids(str(base)).uid for _ in range(4)]
    stale = staging(ids[0])
    (stale / "sub").mkdir()
    (stale / "sub" / "tensors.safetensors").write_bytes(b"x" * 100)
    os.symlink("/etc/passwd", stale / "link")  # removed as a link, never followed
    live = staging(ids[1])
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)  # what a running load holds on its folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(b"k")
    (base / f"safeload-out-{ids[2]}").symlink_to(elsewhere)
    claiming = staging(ids[3], owner=os.geteuid())  # another process between mkdir and its lock
    impostor = staging(_unissued(), owner=12345)  # right name, an ordinary user's folder
    (base / "safeload-outside").mkdir()
    try:
        assert priv.sweep_stale_staging(str(base)) == (1 if root else 0)
    finally:
        os.close(held)
    assert stale.exists() != root
    assert live.is_dir() and claiming.is_dir() and impostor.is_dir() and (base / "safeload-outside").is_dir()
    assert (elsewhere / "keep").exists() and Path("/etc/passwd").exists()
    assert priv.sweep_stale_staging(str(base)) == (1 if root else 0)  # the run ended: its folder goes now
    assert live.exists() != root
    # A root-owned folder unchanged for longer than any claim takes to lock it: a run killed after it took
    # its output back. Only then does it go, with what the worker wrote; the impostor stays.
    (claiming / "tensors.safetensors").write_bytes(b"x" * 100)
    later = time.time() + priv._CLAIM_GRACE_S + 60
    assert priv.sweep_stale_staging(str(base), now=time.time() + priv._CLAIM_GRACE_S - 60) == 0
    assert priv.sweep_stale_staging(str(base), now=later) == (1 if root else 0)
    assert claiming.exists() != root
    assert impostor.is_dir() and (base / "safeload-outside").is_dir()
