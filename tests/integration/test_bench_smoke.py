"""``python -m bench --quick`` runs end to end and reports every row (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench._data import QUICK, Dataset
from bench._rows import groups

REPO = Path(__file__).resolve().parents[2]
# Rows that measure torch, safetensors, hashlib or transformers alone: they must always produce figures.
BASELINES = {
    "big.torch", "big.torch_wo", "big.torch_mmap", "big.safetensors", "big.torch_legacy", "big.pickle",
    "small.torch", "small.torch_wo", "small.torch_mmap", "small.safetensors", "small.torch_legacy",
    "small.pickle", "jail.python", "verify.sha256", "verify.read",
    "minilm.plain_st", "minilm.plain_bin", "gen.plain_st", "gen.plain_bin",
}


@pytest.mark.slow
def test_quick_bench_prints_every_row(tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    env = {**os.environ, "COLUMNS": "400"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path), "--chart", str(chart)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    planned = [row for g in groups(Dataset(tmp_path / "data-quick", QUICK), 1) for row in g.rows]
    results = json.loads((tmp_path / "results.json").read_text())
    got = {r["key"]: r for g in results["groups"] for r in g["rows"]}
    assert [r.key for r in planned] == list(got)
    for row in planned:
        r = got[row.key]
        assert row.name in proc.stdout, f"row {row.name!r} missing from the printed table"
        assert row.label in proc.stdout, f"what ran for {row.key} missing from the printed table"
        assert r["status"] in ("ok", "na", "failed")
        if r["status"] == "ok":
            assert r["median"] is not None and r["median"] > 0
            assert len(r["runs"]) == 1
        else:
            assert r["reason"], f"{row.key} is {r['status']} without a reason"
            word = "n/a" if r["status"] == "na" else "failed"
            assert f"{word} ({r['reason'][:40]}" in proc.stdout
        if row.baseline is not None and r["status"] == "ok" and got[row.baseline]["status"] == "ok":
            assert r["ratio"] is not None
    not_ok = {k: got[k]["reason"] for k in BASELINES if got[k]["status"] != "ok"}
    assert not not_ok, not_ok
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| path |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["oci_pull", "hub_fetch"])
def test_fetch_benchmarks_print_their_table_and_figures(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{script}", "--size-mib", "8", "--files", "2", "--runs", "1",
         "--dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "safeload cold (jailed, hashed, stored)" in proc.stdout
    assert figures["safeload_cold_s"] > 0 and figures["runs"] == 1
    assert list(tmp_path.iterdir()) == []  # the benchmark leaves nothing behind


@pytest.mark.slow
def test_the_mlflow_benchmark_prints_every_row(tmp_path: Path) -> None:
    pytest.importorskip("mlflow.server", reason="needs the mlflow extra")
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.mlflow_fetch", "--size-mib", "4", "--runs", "1", "--warm-runs", "1",
         "--dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["safeload_cold_s"] > 0 and figures["download_artifacts_s"] > 0
    assert figures["tf_safeload_s"] > 0 and figures["tf_mlflow_local_s"] > 0
    assert "cold: safeload prefetch (jailed, hashed, stored)" in proc.stdout
    assert "warm: safeload.mlflow.transformers.load_model" in proc.stdout
    assert "sklearn" in proc.stdout  # measured, or n/a with the reason
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_dropins_benchmark_prints_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.dropins_warm", "--runs", "1", "--dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    for lib in ("st", "peft", "diffusers"):
        assert figures[f"{lib}_plain_s"] > 0 and figures[f"{lib}_safeload_s"] > 0
    assert proc.stdout.count("safeload, warm:") == 3
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_jail_tiers_benchmark_measures_every_tier(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.jail_tiers", "--size-mib", "16", "--runs", "1", "--dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for tier in ("full", "namespaces", "landlock"):
        assert f"safeload ({tier})" in proc.stdout
    for baseline in ("torch.load weights_only", "safetensors", "jail start-up"):
        assert baseline in proc.stdout
    assert list(tmp_path.iterdir()) == []
