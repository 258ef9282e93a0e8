"""Which host paths and inodes the jail's unprivileged uid may use."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import _privileges as priv

UID, GID = priv.JAIL_UID, priv.JAIL_GID


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder directly under the system temporary folder (pytest's own is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="safeload-reach-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_reachable_needs_search_permission_on_every_parent(open_dir: Path) -> None:
    outer = open_dir / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    target = inner / "file"
    target.write_text("x")
    outer.chmod(0o755)
    inner.chmod(0o755)
    assert priv.reachable(target, uid=UID, gid=GID)
    outer.chmod(0o700)
    assert not priv.reachable(target, uid=UID, gid=GID)
    outer.chmod(0o710)  # group-searchable only
    assert not priv.reachable(target, uid=UID, gid=GID)
    assert priv.reachable(target, uid=UID, gid=os.stat(outer).st_gid)
    outer.chmod(0o755)
    inner.chmod(0o750)  # the last folder counts too
    assert not priv.reachable(target, uid=UID, gid=GID)


def test_root_only_home_is_not_reachable() -> None:
    root_home = Path("/root")
    if not root_home.exists() or root_home.stat().st_mode & stat.S_IXOTH:
        pytest.skip("/root is searchable by others here")
    assert not priv.reachable(root_home / "anything", uid=UID, gid=GID)


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [
        (0o444, 0, True),   # a read-only store blob
        (0o644, 0, True),
        (0o600, 0, False),  # unreadable: copied
        (0o666, 0, False),  # writable by others: copied
        (0o664, GID, False),  # writable through the group
        (0o644, UID, False),  # the jail's uid owns it and may write it
        (0o444, UID, True),
    ],
)
def test_readable_input(tmp_path: Path, mode: int, owner: int, expected: bool) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x")
    if owner == UID:
        os.chown(path, UID, -1) if os.geteuid() == 0 else pytest.skip("needs root to chown")
    elif owner == GID:
        os.chown(path, -1, GID) if os.geteuid() == 0 else pytest.skip("needs root to chown")
    path.chmod(mode)
    assert priv.readable_input(path.stat(), UID, GID) is expected


def test_interpreter_is_reachable_by_the_jail() -> None:
    python, prefix = priv.jail_interpreter()
    assert Path(python).exists()
    assert python.startswith(prefix.rstrip("/") + "/")
    if priv.drop_privileges():
        assert priv.reachable(python)
