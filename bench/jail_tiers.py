"""Jail start-up and a large zip checkpoint's load in each jail tier, against the plain loaders.

    .venv/bin/python -m bench.jail_tiers [--size-mib 1024] [--runs 5] [--dir /tmp/x]

Measured in one run, the checkpoint in the page cache, rounds shuffled so that a busy machine slows every
row alike:
- ``start-up``: a no-op standard-library program in the jail, from the launcher's call to its return;
- ``load``: ``safeload.load`` of a torch zip checkpoint of float32 tensors (16 MiB each) in the tier,
  every tensor's bytes then read once (a sum), against ``torch.load`` (plain, ``weights_only=True``,
  ``mmap=True``) and ``safetensors`` loading the same tensors the same way.
A tier this host cannot run is reported as such, not measured. Ratios are "times the time of the row
named", so below 1 is faster.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file, save_file

import safeload
from safeload._jail import launcher
from safeload._jail import tiers as _tiers

_TENSOR_MIB = 16


def _write(folder: Path, size_mib: int) -> tuple[Path, Path]:
    n = max(1, size_mib // _TENSOR_MIB)
    gen = torch.Generator().manual_seed(0)
    tensors = {f"layer{i}.weight": torch.rand(_TENSOR_MIB << 18, generator=gen) for i in range(n)}
    zip_path, st_path = folder / "model.pt", folder / "model.safetensors"
    torch.save(tensors, zip_path)
    save_file(tensors, str(st_path))
    return zip_path, st_path


def _touch(obj: dict[str, torch.Tensor]) -> float:
    return float(sum(float(t.sum()) for t in obj.values()))


def _with_tier(tier: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        saved = os.environ.get("SAFELOAD_JAIL")
        os.environ["SAFELOAD_JAIL"] = tier
        try:
            return fn()
        finally:
            if saved is None:
                os.environ.pop("SAFELOAD_JAIL", None)
            else:
                os.environ["SAFELOAD_JAIL"] = saved

    return run


def _measure(rows: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in rows}
    for fn in rows.values():
        fn()  # warm-up: imports, page cache, the tier probe
    for _ in range(runs):
        order = list(rows)
        random.shuffle(order)
        for key in order:
            t = time.perf_counter()
            rows[key]()
            times[key].append(time.perf_counter() - t)
    return times


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _table(title: str, times: dict[str, list[float]], baseline: str, notes: dict[str, str]) -> None:
    table = Table(title=title)
    for col in ("row", "median ms", f"x {baseline}"):
        table.add_column(col, justify="left" if col == "row" else "right")
    base = _median(times[baseline]) if times.get(baseline) else None
    for key, values in times.items():
        med = _median(values)
        ratio = f"{med / base:.2f}" if base else "-"
        table.add_row(key, f"{med * 1000:.1f}", ratio)
    for key, why in notes.items():
        table.add_row(key, "n/a", why[:60])
    Console(width=120).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.jail_tiers", description=__doc__)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args(argv)

    support = _tiers.support()
    tiers = [c.tier for c in support.checks if c.available]
    notes = {c.tier: f"{c.cause}: {c.detail}" for c in support.checks if not c.available}
    with tempfile.TemporaryDirectory(prefix="safeload-bench-tiers-", dir=a.dir) as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        startup = {
            tier: _with_tier(tier, lambda: launcher._run_python_in_jail("pass")) for tier in tiers
        }
        _table("jail start-up (no-op program)", _measure(startup, max(a.runs, 10)), tiers[0], notes)

        zip_path, st_path = _write(folder, a.size_mib)
        loads: dict[str, Callable[[], object]] = {
            "torch.load": lambda: _touch(torch.load(zip_path, weights_only=False)),
            "torch.load weights_only": lambda: _touch(torch.load(zip_path, weights_only=True)),
            "torch.load mmap": lambda: _touch(torch.load(zip_path, weights_only=True, mmap=True)),
            "safetensors": lambda: _touch(load_file(str(st_path))),
        }
        for tier in tiers:
            loads[f"safeload ({tier})"] = _with_tier(tier, lambda: _touch(safeload.load(zip_path)))
        title = f"load a {a.size_mib} MiB torch zip checkpoint and read every tensor"
        _table(title, _measure(loads, a.runs), "torch.load", {f"safeload ({k})": v for k, v in notes.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
