"""Storages at offsets their dtype's alignment does not divide (legacy files put them anywhere).

On x86_64 such storages are mapped zero-copy: the battery below runs common kernels on every real and
integer dtype at misaligned addresses and compares with aligned clones. Complex numbers are the
exception: indexing a complex128 tensor whose data sits at 8 mod 16 (c10::complex<double> is
alignas(16)) kills the process with SIGSEGV, so complex storages are copied into aligned memory. Loads
run in child processes here so that a regression shows up as a failed test rather than a crashed run.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

_REPO = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import safeload
from safeload._loading.loader import _run_jail
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


def _in_child(script: str, path: Path) -> Any:
    """Run ``script`` on ``path`` in a fresh interpreter; a crash fails the test, not the test run."""
    proc = subprocess.run([sys.executable, "-c", script, str(_REPO), str(path)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"the child crashed (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    got = _in_child(_CHILD, path)
    assert got["offsets"] == [8]  # the file really holds it misaligned
    assert got["ptr"] == 0
    assert got["picked"] == torch.view_as_real(z[torch.tensor([3, 1, 7])]).tolist()
    assert got["sum"] == torch.view_as_real(z.sum()).tolist()


# Runs in a child: a crash in some kernel must fail the test, not the test run. For every storage the
# child reports where its data sits and whether a battery of ops on the loaded (possibly misaligned)
# tensor agrees with the same ops on an aligned clone.
_BATTERY = r"""
import json, sys, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[1])
import safeload

def ops(x):
    dt = x.dtype
    out = {"idx": x[torch.tensor([3, 1, 7])], "sum": x.sum(dim=-1), "clone": x.clone(),
           "T": x.t().contiguous(), "cat": torch.cat([x, x]), "max": x.max(dim=0).values}
    one = True if dt == torch.bool else 1
    y = x.clone(); y += one; out["add_"] = y
    x2 = x.clone(); x.mul_(one); x.add_(one); out["inplace_on_loaded"] = x.clone(); x.copy_(x2)
    if dt != torch.bool:
        out["sort"] = x.sort(dim=-1).values; out["argmax"] = x.argmax(dim=-1); out["cumsum"] = x.cumsum(0)
        acc = torch.zeros_like(x)
        acc.index_add_(0, torch.tensor([0, 2, 2, 5]), x[:4]); out["index_add"] = acc
    if dt.is_floating_point:
        w = x[:16, :16]
        out.update(mm=x @ w, linear=F.linear(x, w, x[0, :16]), softmax=F.softmax(x, -1), gelu=F.gelu(x),
                   ln=F.layer_norm(x, (16,), x[0], x[1]), emb=F.embedding(torch.tensor([[1, 5], [7, 0]]), x),
                   conv2d=F.conv2d(x.reshape(1, 1, 32, 16), w[:2, :9].reshape(2, 1, 3, 3).contiguous()),
                   sdpa=F.scaled_dot_product_attention(*(x.reshape(2, 16, 16),) * 3),
                   bmm=torch.bmm(x.reshape(2, 16, 16), x.reshape(2, 16, 16)), exp=x.exp(),
                   to16=x.to(torch.float16), tobf=x.to(torch.bfloat16), to64=x.to(torch.float64))
    return out

BLAS = {"mm", "linear", "bmm", "conv2d", "sdpa", "sum", "cumsum", "softmax", "ln"}
sd = safeload.load(sys.argv[2])
report = {}
for name, t in sd.items():
    if name == "pad" or name.endswith("_spacer"):
        continue
    want, got = ops(t.clone()), ops(t)
    # Elementwise results must match bit for bit; BLAS and reductions may sum in another order for
    # another alignment, so they match within a tolerance far below what a wrong weight would change.
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(t.dtype, 1e-5)
    wrong = [k for k in want if not (torch.equal(want[k], got[k]) or (k in BLAS and torch.allclose(
        want[k].double(), got[k].double(), rtol=tol, atol=tol)))]
    report[name] = {"ptr": t.untyped_storage().data_ptr(), "wrong": wrong}
print(json.dumps(report))
"""

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool)


def _legacy_misaligned(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A legacy file whose every storage sits at an offset its item size does not divide."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for dt in _DTYPES:
        base = torch.randn(32, 16, generator=g) * 20
        name = dt.__repr__().split(".")[1]
        tensors[name] = base.to(dt) if dt.is_floating_point else base.to(torch.int64).to(dt)
    rng = random.Random(0)
    for attempt in range(400):
        path = tmp_path / f"m{attempt}.pt"
        # Small spacer storages of random lengths move the tensors' storages around the file.
        sd: dict[str, object] = {"pad": "x" * rng.randrange(64)}
        for name, t in tensors.items():
            sd[name] = t
            sd[name + "_spacer"] = torch.zeros(rng.randrange(1, 8), dtype=torch.uint8)
        torch.save(sd, path, _use_new_zipfile_serialization=False)
        raw = path.read_bytes()
        offsets = {name: raw.find(t.view(torch.uint8).numpy().tobytes())
                   for name, t in tensors.items() if t.element_size() > 1}
        if all(off % tensors[n].element_size() for n, off in offsets.items()):
            return path, offsets
    raise AssertionError("no layout misaligned every storage")


def test_misaligned_storages_map_zero_copy_and_compute_like_aligned_ones(tmp_path: Path) -> None:
    path, offsets = _legacy_misaligned(tmp_path)
    report = _in_child(_BATTERY, path)
    assert set(report) == {dt.__repr__().split(".")[1] for dt in _DTYPES}
    assert {k: v["wrong"] for k, v in report.items()} == {k: [] for k in report}
    for name, off in offsets.items():
        if platform.machine() == "x86_64":
            # Zero-copy: the data sits where the file put it, misalignment included.
            assert report[name]["ptr"] % 64 == off % 64 != 0, name
        else:
            assert report[name]["ptr"] % 64 == 0, name
