"""Storages at offsets their dtype's alignment does not divide (legacy files put them anywhere).

torch's CPU kernels do not all tolerate misaligned data: indexing a complex128 tensor whose data sits at
8 mod 16 (c10::complex<double> is alignas(16)) kills the process with SIGSEGV on x86_64. So the host
copies such storages into aligned memory instead of mapping them; the load runs in a child process here
so that a regression shows up as a failed test rather than a crashed test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import safeload
from safeload.loader import _run_jail
from safeload.policy import load_policy
import os
path = sys.argv[2]
fd = os.open(path, os.O_RDONLY)
manifest, _ = _run_jail(fd, os.fstat(fd).st_size, load_policy(None), "inert")
offsets = [s.offset % 16 for s in manifest.storages if s.dtype == "complex128"]
out = safeload.load(path)
z = out["z"]
picked = z[torch.tensor([3, 1, 7])]
print(json.dumps({"offsets": offsets, "ptr": z.data_ptr() % 16, "picked": torch.view_as_real(picked).tolist(),
                  "sum": torch.view_as_real(z.sum()).tolist()}))
"""


def _legacy_with_complex_at_8_mod_16(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    z = torch.complex(torch.arange(16, dtype=torch.float64), -torch.arange(16, dtype=torch.float64))
    # The raw storages follow the pickles back to back; pad a string until the complex storage lands at
    # 8 mod 16 (its offset moves with the pickle's length, one byte per padding character).
    for pad in range(32):
        path = tmp_path / f"c{pad}.pt"
        torch.save({"pad": "x" * pad, "z": z}, path, _use_new_zipfile_serialization=False)
        raw = path.read_bytes()
        at = raw.find(z.numpy().tobytes())
        if at % 16 == 8:
            return path, z
    raise AssertionError("no padding put the storage at 8 mod 16")


def test_complex128_at_8_mod_16_is_copied_and_indexes_safely(tmp_path: Path) -> None:
    path, z = _legacy_with_complex_at_8_mod_16(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(_REPO), str(path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"the load crashed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["offsets"] == [8]  # the file really holds it misaligned
    assert got["ptr"] == 0
    assert got["picked"] == torch.view_as_real(z[torch.tensor([3, 1, 7])]).tolist()
    assert got["sum"] == torch.view_as_real(z.sum()).tolist()
