"""safeload used by an ordinary user: no root, so bubblewrap maps the jail to the caller's own uid.

Most users run inference as a normal account; this path skips the launcher's privilege drop and the
staging handover entirely. Run as root (as CI is), the test starts a child as a fresh unprivileged uid
with the interpreter the jail itself would use (a pyenv Python under /root is out of its reach); run by
an ordinary user, the child simply runs as that user. Either way the child loads a benign checkpoint
and one whose pickle calls ``os.system``, inertly and in execute mode, and the payload must leave no
trace.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from safeload._jail.privileges import jail_interpreter

_REPO = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, os, sys
import torch
import safeload
out = {"uid": os.getuid()}
benign = safeload.load(sys.argv[1])
out["benign"] = {k: v.tolist() for k, v in benign.items()}
inert = safeload.load(sys.argv[2])
out["inert"] = {"w": inert["w"].tolist(), "p": [inert["p"].module, inert["p"].name]}
executed = safeload.load(sys.argv[2], unpickler="execute", weights_only=False)
out["execute_w"] = executed["w"].tolist()
print(json.dumps(out))
"""


class _Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    # Under /tmp with mode 0755: pytest's own temporary folders are private to root.
    path = Path(tempfile.mkdtemp(prefix="safeload-unpriv-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _interpreter() -> tuple[list[str], dict[str, str]]:
    """The command that runs Python as the child user, and the environment it needs."""
    site = sysconfig.get_paths()["purelib"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([str(_REPO), site]),
           "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1"}
    if os.geteuid() != 0:
        return [sys.executable], env
    uid = 0x6A000000 + secrets.randbelow(1 << 20)  # an id no file or process uses
    python, _ = jail_interpreter()  # the interpreter a user without access to root's files can run
    return [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--", python], env


def test_an_unprivileged_caller_loads_safely(shared_dir: Path) -> None:
    canary = shared_dir / f"canary-{secrets.token_hex(4)}"
    home = shared_dir / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    weights = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
               "b": torch.tensor([1, -2], dtype=torch.int64)}
    benign, evil = shared_dir / "benign.pt", shared_dir / "evil.pt"
    torch.save(weights, benign)
    torch.save({"w": torch.ones(3), "p": _Payload(f"touch {canary}")}, evil)
    for f in (benign, evil):
        f.chmod(0o644)

    cmd, env = _interpreter()
    env["HOME"] = str(home)
    proc = subprocess.run([*cmd, "-c", _CHILD, str(benign), str(evil)], capture_output=True, text=True,
                          env=env, cwd=shared_dir, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    assert got["uid"] != 0
    assert got["benign"] == {k: v.tolist() for k, v in weights.items()}
    assert got["inert"] == {"w": [1.0, 1.0, 1.0], "p": ["posix", "system"]}
    assert got["execute_w"] == [1.0, 1.0, 1.0]
    # The payload ran in execute mode, inside the jail: its file never reached the host.
    assert not canary.exists()
