"""What the fetch benchmarks (``bench.oci_pull``, ``bench.hub_fetch``) share: inputs, timing, the table."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["GiB", "median", "pairs", "print_table", "read_all", "rmtree", "write_random_files"]

GiB = 1 << 30


def write_random_files(folder: Path, total: int, files: int) -> dict[str, str]:
    """``files`` incompressible files of ``total`` bytes in all (no two share a chunk); name -> sha256."""
    folder.mkdir(parents=True)
    per = total // files
    block = os.urandom(64 << 20) if per >= 64 << 20 else os.urandom(max(per, 1))
    pins = {}
    for i in range(files):
        name = f"model-{i:05d}-of-{files:05d}.safetensors"
        h = hashlib.sha256()
        with open(folder / name, "wb") as fh:
            for j in range(max(per // len(block), 1)):
                k = (i * 8 + j) % 61
                chunk = block[k:] + block[:k]
                fh.write(chunk)
                h.update(chunk)
        pins[name] = "sha256:" + h.hexdigest()
    return pins


def read_all(paths: list[Path]) -> float:
    """Seconds to read every byte of ``paths`` once."""
    t = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.read(8 << 20):
                pass
    return time.perf_counter() - t


def rmtree(path: Path) -> None:
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o755)  # the store's folders are read-only
    shutil.rmtree(path, ignore_errors=True)


def pairs(
    runs: int,
    first: Callable[[int], None],
    second: Callable[[int], None],
    cleanup: Callable[[int], None] | None = None,
) -> tuple[list[float], list[float]]:
    """Time ``first(i)`` then ``second(i)`` for each run ``i``; ``cleanup(i)`` runs off the clock after
    each pair. Each call starts after ``os.sync`` so write-back of earlier files does not land on it."""
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        for fn, out in ((first, a), (second, b)):
            os.sync()
            t = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t)
        if cleanup is not None:
            cleanup(i)
    return a, b


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def print_table(title: str, rows: list[tuple[str, str, str, str, str]]) -> None:
    table = Table(title=title)
    for col in ("row", "median s", "GiB/s", "ratio", "target"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
