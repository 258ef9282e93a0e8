"""Running a child Python process as another (unprivileged) user, the way an ordinary account would.

Run as root (as CI is), :func:`run_as` starts the child through ``setpriv --reuid --regid --clear-groups``
with the interpreter the jail itself uses (a pyenv Python under /root is out of another user's reach)
and the checkout and virtual environment on ``PYTHONPATH``; the child gets its own ``HOME``. Folders the
child must reach have to be searchable by it: :func:`shared_folder` makes one under ``/tmp``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from safeload._jail.privileges import jail_interpreter

__all__ = ["NOBODY", "REPO", "fresh_uid", "home_for", "run_as", "shared_folder"]

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def fresh_uid() -> int:
    """A uid no file or process uses."""
    return 0x6A000000 + secrets.randbelow(1 << 20)


@contextmanager
def shared_folder(prefix: str = "safeload-users-") -> Iterator[Path]:
    """A fresh folder under /tmp (mode 0755) that other users can reach; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for dirpath, dirs, _ in os.walk(path):
            for d in dirs:
                with_path = os.path.join(dirpath, d)
                if not os.path.islink(with_path):
                    os.chmod(with_path, 0o700)
        shutil.rmtree(path, ignore_errors=True)


def home_for(uid: int, parent: Path) -> Path:
    """A fresh home folder for ``uid`` under ``parent``, owned by it (mode 0700)."""
    home = parent / f"home-{uid}"
    home.mkdir(mode=0o700)
    os.chown(home, uid, uid)
    return home


def run_as(
    uid: int,
    code: str,
    *args: str,
    home: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    wrap: tuple[str, ...] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` as ``uid`` (gid the same, no supplementary groups).

    ``wrap`` is a command prefix run as root before the privilege drop (such as ``unshare -m ...``);
    ``uid`` 0 runs the child as root.
    """
    site = sysconfig.get_paths()["purelib"]
    full = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join([str(REPO), site]),
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "HOME": str(home),
        **(env or {}),
    }
    python, _ = jail_interpreter()
    drop: list[str] = []
    if uid != 0:
        setpriv = shutil.which("setpriv") or "setpriv"
        drop = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return subprocess.run(
        [*wrap, *drop, python, "-c", code, *args],
        capture_output=True, text=True, env=full, cwd=cwd or home, timeout=timeout, check=False,
    )  # fmt: skip
