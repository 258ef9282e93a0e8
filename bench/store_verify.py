"""Cold verification and warm-load overhead of the verified store (issue 3's speed targets).

    .venv/bin/python -m bench.store_verify [--size-mib 2048] [--files 4] [--dir /tmp/x]

Measured in one run, all files in the page cache (so the figures are CPU-bound, as the targets are):
- ``hashlib``: single-thread ``hashlib.sha256`` speed over an in-memory buffer, times the cores the store
  can use (min(files, cpus)): the target's reference;
- ``cold copy``: ``fetch_model`` of a ``directory`` registry model into an empty store (copy + hash
  of each file, files in parallel threads), the path every registry takes for bytes it does not own;
- ``cold in-place``: ``Store.ingest_owned`` (hash in place + rename), the path for Hub downloads, which
  already sit in the store's private staging area;
- ``warm``: ``fetch_model`` of the model already in the store, against reading every file once.
Targets: cold >= 0.8 x hashlib x cores; warm adds <= 5 % to reading the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench._fetchbench import read_all, write_random_files
from safeload._trust.hashing import parallel
from safeload._trust.resolve import fetch_model
from safeload._trust.store import Store
from safeload.policy import parse_policy


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _hashlib_speed(nbytes: int = 512 << 20) -> tuple[float, float]:
    """(bytes per wall second, bytes per CPU second) of one thread."""
    buf = os.urandom(64 << 20) * (nbytes // (64 << 20))
    h = hashlib.sha256()
    c, t = _cpu(), time.perf_counter()
    h.update(buf)
    return len(buf) / (time.perf_counter() - t), len(buf) / (_cpu() - c)


def _hashlib_parallel(threads: int, nbytes: int = 256 << 20) -> float:
    bufs = [os.urandom(64 << 20) * (nbytes // (64 << 20)) for _ in range(threads)]
    t = time.perf_counter()
    parallel(lambda b: hashlib.sha256(b).digest(), bufs, workers=threads)
    return threads * nbytes / (time.perf_counter() - t)


def _linked_into(staging: Path, paths: list[Path]) -> list[Path]:
    """Hard links to ``paths`` inside ``staging``, read once so they sit in the page cache."""
    owned = []
    for p in paths:
        os.link(p, staging / p.name)
        owned.append(staging / p.name)
    read_all(owned)
    return owned


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="safeload-bench-", dir=args.dir))
    try:
        model = root / "registry" / "bench" / "model"
        # every chunk of every file distinct: no two files share a blob
        pins = write_random_files(model, args.size_mib << 20, args.files)
        paths = [model / name for name in pins]
        total = sum(p.stat().st_size for p in paths)
        cores = min(args.files, os.cpu_count() or 1)

        speeds = [_hashlib_speed() for _ in range(3)]
        one = max(w for w, _ in speeds)
        one_cpu = max(c for _, c in speeds)
        par = max(_hashlib_parallel(cores) for _ in range(2))  # do `cores` threads really scale here?
        read_all(paths)  # page cache warm-up

        text = (
            f'version = 1\nstore = "{root / "store"}"\n[registries.disk]\nkind = "directory"\n'
            f'path = "{root / "registry"}"\n[models."bench/model"]\nregistry = "disk"\n'
            f"files = {json.dumps(pins)}\n"
        ).replace('": "', '" = "')
        policy = parse_policy(text)
        read_all(paths)  # inputs in the page cache: the figure is about CPU, not this disk
        os.sync()  # the files just written must not be written back on the clock (as in bench.__main__)
        c, t = _cpu(), time.perf_counter()
        got = fetch_model("bench/model", policy=policy, progress=False)
        cold_copy = time.perf_counter() - t
        cold_copy_cpu = _cpu() - c

        # Hash-in-place path: hard links to the files inside a fresh store's staging area.
        store2 = Store(root / "store2")
        with store2.staging() as staging:
            owned = _linked_into(staging, paths)
            os.sync()
            c, t = _cpu(), time.perf_counter()
            parallel(lambda q: store2.ingest_owned(q, staging, expected=pins[q.name], what=q.name), owned)
            cold_owned = time.perf_counter() - t
            cold_owned_cpu = _cpu() - c

        # The same with one thread: per-core efficiency, independent of how well this machine's cores scale.
        store3 = Store(root / "store3")
        with store3.staging() as staging:
            owned = _linked_into(staging, paths)
            os.sync()
            t = time.perf_counter()
            for q in owned:
                store3.ingest_owned(q, staging, expected=pins[q.name], what=q.name)
            cold_one = time.perf_counter() - t

        folder_files = [got.folder / p.name for p in paths]
        reads, warms = [], []
        for _ in range(5):
            reads.append(read_all(folder_files))
            t = time.perf_counter()
            fetch_model("bench/model", policy=policy, progress=False)
            warms.append(time.perf_counter() - t)
        read_s, warm_s = min(reads), min(warms)

        gib = 1 << 30
        result = {
            "model": f"{total / gib:.2f} GiB in {args.files} files",
            "cpus": os.cpu_count(),
            "hashlib_1_thread_GiBps": round(one / gib, 3),
            "reference_GiBps": round(one * cores / gib, 3),
            "hashlib_threads_measured_GiBps": round(par / gib, 3),
            "cold_copy_vs_measured_threads": round(total / cold_copy / par, 3),
            "cold_in_place_vs_measured_threads": round(total / cold_owned / par, 3),
            "cold_copy_GiBps": round(total / cold_copy / gib, 3),
            "cold_copy_ratio": round(total / cold_copy / (one * cores), 3),
            "cold_in_place_GiBps": round(total / cold_owned / gib, 3),
            "cold_in_place_ratio": round(total / cold_owned / (one * cores), 3),
            # Contention-proof: CPU seconds per byte of hashlib alone vs the whole cold path.
            "cold_in_place_1_thread_GiBps": round(total / cold_one / gib, 3),
            "cold_in_place_1_thread_vs_hashlib_1_thread": round(total / cold_one / one, 3),
            "cold_copy_cpu_efficiency": round((total / one_cpu) / cold_copy_cpu, 3),
            "cold_in_place_cpu_efficiency": round((total / one_cpu) / cold_owned_cpu, 3),
            "load_average": os.getloadavg()[0],
            "read_files_s": round(read_s, 4),
            "warm_fetch_s": round(warm_s, 5),
            "warm_overhead_pct": round(100 * warm_s / read_s, 3),
        }
        print(json.dumps(result, indent=1))
    finally:
        for dirpath, _dirs, _files in os.walk(root):
            os.chmod(dirpath, 0o755)  # the store's folders are read-only
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
