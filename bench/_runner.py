"""Runs every row of every group in fresh processes, interleaved, and reduces the runs to figures.

Within a group, run ``i`` measures every row once before run ``i + 1`` starts, so each ratio is taken
between two measurements made moments apart (the machine is shared and noisy); the figure shown is the
median of those per-run ratios, with their min and max.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._child import MARK
from bench._data import Dataset
from bench._rows import Check, Group, Row

__all__ = ["Figures", "RowResult", "check_results", "from_json", "profile_rows", "run_groups"]

_REPO = Path(__file__).resolve().parent.parent
_CHILD_TIMEOUT_S = 900


@dataclass
class RowResult:
    """Every run of one row (raw child outputs), in run order."""

    row: Row
    runs: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # the path ran but returned something other than its baseline did

    @property
    def status(self) -> str:
        if self.problem:
            return "failed"
        for r in self.runs:
            if r["status"] != "ok":
                return str(r["status"])
        return "ok" if self.runs else "na"

    @property
    def reason(self) -> str:
        if self.problem:
            return self.problem
        for r in self.runs:
            if r["status"] != "ok":
                return str(r.get("reason", ""))
        return "" if self.runs else "not run"


@dataclass(frozen=True)
class Figures:
    """The reduced figures of one row."""

    median: float | None
    lo: float | None
    hi: float | None
    ratio: float | None
    ratio_lo: float | None
    ratio_hi: float | None
    host_rss: int | None
    host_rss_growth: int | None
    worker_rss: int | None
    checks: tuple[tuple[Check, float | None, bool | None], ...]

    @staticmethod
    def of(res: RowResult, table: dict[str, RowResult]) -> Figures:
        row = res.row
        ok = res.status == "ok"
        vals = [_value(r, row) for r in res.runs] if ok else []
        med = statistics.median(vals) if vals else None
        ratio = _pairs(res, table, row.baseline, "ratio")
        checks = []
        for c in row.checks:
            got: float | None
            if c.kind in ("ratio_max", "ratio_min"):
                got = _med(_pairs(res, table, c.baseline, "ratio"))
            elif c.kind == "diff_max":
                got = _med(_pairs(res, table, c.baseline, "diff"))
            elif c.kind == "abs_max":
                got = med
            else:
                growth = [(r["peak_rss"] - r["rss_before"]) / r["tensor_bytes"]
                          for r in res.runs if ok and r.get("tensor_bytes")]
                got = _med(growth)
            passed = None if got is None else (got >= c.limit if c.kind == "ratio_min" else got <= c.limit)
            checks.append((c, got, passed))
        host = [int(r["peak_rss"]) for r in res.runs if r["status"] == "ok"]
        growth_b = [int(r["peak_rss"] - r["rss_before"]) for r in res.runs if ok and "rss_before" in r]
        kids = [int(r.get("worker_peak_rss", 0)) for r in res.runs if r["status"] == "ok"]
        return Figures(
            med, min(vals) if vals else None, max(vals) if vals else None,
            _med(ratio), min(ratio) if ratio else None, max(ratio) if ratio else None,
            int(statistics.median(host)) if host else None,
            int(statistics.median(growth_b)) if growth_b else None,
            max(kids) if kids and max(kids) > 0 else None,
            tuple(checks),
        )


def _value(run: dict[str, Any], row: Row) -> float:
    return float(run["throughput"] if row.metric == "throughput" else run["seconds"])


def _med(xs: list[float] | None) -> float | None:
    return statistics.median(xs) if xs else None


def _pairs(res: RowResult, table: dict[str, RowResult], base_key: str | None, how: str) -> list[float]:
    if base_key is None or res.status != "ok":
        return []
    base = table.get(base_key)
    if base is None or base.status != "ok":
        return []
    out = []
    for a, b in zip(res.runs, base.runs, strict=False):
        va, vb = _value(a, res.row), _value(b, base.row)
        out.append(va / vb if how == "ratio" else va - vb)
    return out


def _rmtree(path: Path) -> None:
    def unlock(func: Callable[..., Any], p: str, _exc: object) -> None:
        # The store makes blobs and folders read-only; a non-root user must unlock before deleting.
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, stat.S_IRWXU)
        func(p)

    if path.exists():
        shutil.rmtree(path, onerror=unlock)


class _Server:
    """A ``bench._child --serve`` process: one forked process per measurement, after shared imports."""

    def __init__(self, work: Path) -> None:
        self.work = work
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._child", "--serve", str(_CHILD_TIMEOUT_S)], cwd=work, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def wait_ready(self) -> None:
        if self.stdout.readline().strip() != "ready":
            raise RuntimeError("the benchmark's fork server did not start")

    def run(self, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:10]
        log, result = self.work / "logs" / f"{tag}.log", self.work / "logs" / f"{tag}.json"
        log.parent.mkdir(parents=True, exist_ok=True)
        req = {"spec": spec, "env": env, "cwd": str(self.work), "log": str(log), "result": str(result)}
        self.stdin.write(json.dumps(req) + "\n")
        self.stdin.flush()
        reply = json.loads(self.stdout.readline())
        text = log.read_text(errors="replace") if log.exists() else ""
        try:
            if reply["exit"] == "timeout":
                return {"status": "failed", "reason": f"timed out after {_CHILD_TIMEOUT_S}s", "log": text}
            if not result.exists():
                tail = text.strip().splitlines()[-1:] or [""]
                return {"status": "failed", "reason": f"exited {reply['exit']}: {tail[0][:200]}", "log": text}
            out: dict[str, Any] = json.loads(result.read_text())
            out["log"] = text
            return out
        finally:
            log.unlink(missing_ok=True)
            result.unlink(missing_ok=True)

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=60)


def _spawn(spec: dict[str, Any], env: dict[str, str], work: Path) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, "-m", "bench._child", json.dumps(spec)], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=_CHILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {_CHILD_TIMEOUT_S}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            out: dict[str, Any] = json.loads(line[len(MARK):])
            out["log"] = proc.stderr
            return out
    tail = proc.stderr.strip().splitlines()[-1:] or [""]
    reason = f"child exited {proc.returncode}: {tail[0][:200]}"
    return {"status": "failed", "reason": reason, "log": proc.stderr}


def _measure(row: Row, ds: Dataset, work: Path, log: Callable[[str], None],
             server: _Server | None, profile: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH", "")]))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    cold: Path | None = None
    if row.store != "none":
        if row.store == "cold":
            cold = work / "stores" / f"cold-{uuid.uuid4().hex[:8]}"
            store = cold
        else:
            store = work / "stores" / "warm"
        store.parent.mkdir(parents=True, exist_ok=True)
        policy = work / "stores" / f"trust-{store.name}.toml"
        policy.write_text(ds.policy_text(store))
        env["SAFELOAD_POLICY"] = str(policy)
    if cold is not None:
        # The previous measurement's writes are still being flushed; without this, that write-back lands
        # in whichever row runs next.
        os.sync()
    spec = {"case": row.case, "params": row.params, "profile": profile}
    t0 = time.monotonic()
    try:
        out = server.run(spec, env) if server is not None else _spawn(spec, env, work)
    finally:
        if cold is not None:
            _rmtree(cold)
        if row.store != "none":
            _rewarm_source(row, ds)
    text = out.pop("log", "")
    wall = time.monotonic() - t0
    if out["status"] == "failed":
        log(f"  {row.key} failed ({wall:.1f} s): {out['reason']}\n{text[-2000:]}")
    elif out["status"] == "ok":
        log(f"  {row.key}: {out.get('seconds', 0):.3f} s measured, {wall:.1f} s in all")
    if profile:
        log(text)
    return out


def _read_files(paths: Iterable[Path]) -> None:
    buf = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _rewarm_source(row: Row, ds: Dataset) -> None:
    """Read a store row's registry model again: the store's copy drops the source's cached pages behind it
    (safeload._trust.hashing), and the rows that read the source directly must find it warm, as they did
    before."""
    name = row.params.get("name")
    if isinstance(name, str) and name.startswith("bench/"):
        folder = ds.model_dir(name.removeprefix("bench/"))
        if folder.is_dir():
            _read_files(sorted(p for p in folder.rglob("*") if p.is_file()))


def _warm_page_cache(ds: Dataset) -> None:
    _read_files(ds.all_files())


def run_groups(groups: list[Group], ds: Dataset, work: Path, log: Callable[[str], None],
               parallel: int = 1, spawn: bool = False) -> dict[str, RowResult]:
    """Measure every row; rows whose path is missing or broken are kept with their reason.

    ``spawn`` starts a new interpreter per measurement instead of forking one from the server.
    """
    work.mkdir(parents=True, exist_ok=True)
    _rmtree(work / "stores")
    _warm_page_cache(ds)
    t0 = time.monotonic()
    servers: list[_Server | None] = [None] * parallel if spawn else [_Server(work) for _ in range(parallel)]
    for srv in servers:
        if srv is not None:
            srv.wait_ready()
    log(f"bench: {parallel} fork server(s) up in {time.monotonic() - t0:.1f} s")
    results: dict[str, RowResult] = {}
    rng = random.Random(0)
    try:
        for g in groups:
            for row in g.rows:
                results[row.key] = RowResult(row)
            # Paths that read from the store run once unmeasured first, so "warm" means warm.
            for row in g.rows:
                if row.store == "warm":
                    out = _measure(row, ds, work, log, servers[0])
                    if out["status"] != "ok":
                        results[row.key].runs.append(out)
            for i in range(g.runs):
                log(f"bench: {g.key} run {i + 1}/{g.runs}")
                todo = [r for r in g.rows if results[r.key].status == "ok" or not results[r.key].runs]
                # A new order each run, so no path always runs right after the same other path.
                rng.shuffle(todo)
                outs = _measure_all(todo, ds, work, log, servers)
                for row, out in zip(todo, outs, strict=True):
                    results[row.key].runs.append(out)
    finally:
        for srv in servers:
            if srv is not None:
                srv.close()
    check_results(results)
    return results


def profile_rows(rows: list[Row], ds: Dataset, work: Path, log: Callable[[str], None]) -> None:
    """Run each row once under cProfile (after its warm-up, if it has one) and log the statistics."""
    work.mkdir(parents=True, exist_ok=True)
    _warm_page_cache(ds)
    srv = _Server(work)
    srv.wait_ready()
    try:
        for row in rows:
            if row.store == "warm":
                _measure(row, ds, work, log, srv)
            log(f"bench: profile of {row.key}: {row.label}")
            _measure(row, ds, work, log, srv, profile=True)
    finally:
        srv.close()


def check_results(results: dict[str, RowResult]) -> None:
    """Fail a row whose call returned other tensors than its baseline's (a fast wrong answer is no answer)."""
    for res in results.values():
        base = results.get(res.row.baseline or "")
        if base is None or res.status != "ok" or base.status != "ok":
            continue
        mine = {(r.get("storages"), r.get("tensor_bytes")) for r in res.runs}
        theirs = {(r.get("storages"), r.get("tensor_bytes")) for r in base.runs}
        if None in {x for pair in mine | theirs for x in pair}:
            continue
        if mine != theirs:
            (ms, mb), (ts, tb) = sorted(mine)[0], sorted(theirs)[0]
            res.problem = (f"wrong result: returned {ms} storages of {mb} bytes, "
                           f"{base.row.name} returned {ts} of {tb}")


def from_json(groups: list[Group], dump: dict[str, Any]) -> dict[str, RowResult]:
    """The runs of an earlier ``results.json``, for the rows still planned."""
    runs = {r["key"]: r["runs"] for g in dump["groups"] for r in g["rows"]}
    results = {row.key: RowResult(row, runs.get(row.key, [])) for g in groups for row in g.rows}
    check_results(results)
    return results


def _measure_all(rows: list[Row], ds: Dataset, work: Path, log: Callable[[str], None],
                 servers: list[_Server | None]) -> list[dict[str, Any]]:
    if len(servers) == 1:
        return [_measure(r, ds, work, log, servers[0]) for r in rows]
    import queue
    from concurrent.futures import ThreadPoolExecutor

    free: queue.Queue[_Server | None] = queue.Queue()
    for srv in servers:
        free.put(srv)

    def one(row: Row) -> dict[str, Any]:
        srv = free.get()
        try:
            return _measure(row, ds, work, log, srv)
        finally:
            free.put(srv)

    with ThreadPoolExecutor(len(servers)) as pool:
        return list(pool.map(one, rows))
