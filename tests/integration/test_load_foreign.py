"""A checkpoint someone else can write is loaded from a private copy, not mapped.

Mapped, such a file could be rewritten under the loaded tensors (bytes that were never parsed or
checked), or truncated, which kills the caller with SIGBUS on its next read of a tensor. Each case
loads the file in a child process, then truncates and overwrites it the way its other writer could,
and reads every tensor: a mapping would crash the child or return the new bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

_REPO = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import safeload
path = sys.argv[2]
sd = safeload.load(path)
with open(path, "r+b") as f:  # what the file's other writer may do once the load has returned
    f.truncate(0)
    f.write(b"\xff" * 4096)
print(json.dumps({k: v.tolist() for k, v in sd.items()}))
"""

_WEIGHTS = {"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "b": torch.ones(3)}

_CASES = ["group-writable", "world-writable"] + (["other-owner"] if os.geteuid() == 0 else [])


@pytest.mark.parametrize("fmt", ["zip", "safetensors"])
@pytest.mark.parametrize("who", _CASES)
def test_a_file_others_may_write_is_copied_before_use(tmp_path: Path, who: str, fmt: str) -> None:
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "zip":
        torch.save(_WEIGHTS, path)
    else:
        save_file(_WEIGHTS, str(path))
    if who == "group-writable":
        path.chmod(0o664)
    elif who == "world-writable":
        path.chmod(0o666)
    else:
        os.chown(path, 0x6B000123, 0x6B000123)  # a user who is neither the caller nor root
        path.chmod(0o644)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(_REPO), str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"the child died (exit {proc.returncode}): {proc.stderr[-2000:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {k: v.tolist() for k, v in _WEIGHTS.items()}
    assert path.stat().st_size == 4096  # the file really changed under the loaded tensors
