"""What the benchmark measures: one :class:`Row` per load path, grouped, with the targets of issue 6."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from bench._data import Dataset

__all__ = ["Check", "Group", "Row", "groups"]

_MiB = 1 << 20


@dataclass(frozen=True)
class Check:
    """One target from issue 6, evaluated on the medians of the pairs measured in the same run.

    ``ratio_max``/``ratio_min``: the median of per-run ratios to ``baseline`` (for throughput rows the
    ratio is row throughput over baseline throughput); ``diff_max``: the median of per-run differences
    to ``baseline`` in seconds; ``abs_max``: the median itself in seconds; ``rss_max``: host peak RSS
    growth during the load over the bytes of the tensors returned.
    """

    kind: Literal["ratio_max", "ratio_min", "diff_max", "abs_max", "rss_max"]
    limit: float
    text: str
    baseline: str | None = None


@dataclass(frozen=True)
class Row:
    """One measured path. ``label`` is exactly what ran; ``baseline`` is the row the ratio is to."""

    key: str
    name: str
    label: str
    case: str
    params: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    metric: Literal["time", "throughput"] = "time"
    # none: no policy; policy: a trust.toml with the shared store; cold: an empty store of its own;
    # warm: the shared store, after one unmeasured run of the same path.
    store: Literal["none", "policy", "cold", "warm"] = "none"
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    runs: int
    rows: tuple[Row, ...]


def _size(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / _MiB:.0f} MiB"


def _load_rows(ds: Dataset, which: str, targets: bool) -> tuple[Row, ...]:
    zip_, legacy, pkl, st = (ds.ckpt(which, f) for f in ("zip", "legacy", "pkl", "safetensors"))
    p = f"{which}."
    zip_checks: tuple[Check, ...] = ()
    legacy_checks: tuple[Check, ...] = ()
    if targets:
        zip_checks = (
            Check("ratio_max", 0.25, "<= 0.25x torch.load", p + "torch"),
            Check("diff_max", 0.100, "<= safetensors + 100 ms", p + "safetensors"),
            Check("rss_max", 1.10, "host RSS growth <= 1.1x tensors", None),
        )
        legacy_checks = (Check("ratio_max", 0.5, "<= 0.5x torch.load", p + "torch_legacy"),)
    return (
        Row(p + "torch", "torch.load zip", f"torch.load({zip_.name!r}, weights_only=False)", "torch_load",
            {"path": str(zip_), "weights_only": False}),
        Row(p + "torch_wo", "torch.load weights_only", f"torch.load({zip_.name!r}, weights_only=True)",
            "torch_load", {"path": str(zip_), "weights_only": True}, p + "torch"),
        Row(p + "torch_mmap", "torch.load mmap", f"torch.load({zip_.name!r}, mmap=True)  # weights_only=True",
            "torch_load", {"path": str(zip_), "weights_only": True, "mmap": True}, p + "torch"),
        Row(p + "safetensors", "safetensors", f"safetensors.torch.load_file({st.name!r})", "safetensors",
            {"path": str(st)}, p + "torch"),
        Row(p + "safeload_zip", "safeload.load zip", f"safeload.load({zip_.name!r})", "safeload_load",
            {"path": str(zip_)}, p + "torch", store="policy", checks=zip_checks),
        Row(p + "torch_legacy", "torch.load legacy", f"torch.load({legacy.name!r}, weights_only=False)",
            "torch_load", {"path": str(legacy), "weights_only": False}),
        Row(p + "safeload_legacy", "safeload.load legacy", f"safeload.load({legacy.name!r})", "safeload_load",
            {"path": str(legacy)}, p + "torch_legacy", store="policy", checks=legacy_checks),
        Row(p + "pickle", "pickle.load raw pickle", f"pickle.load(open({pkl.name!r}))", "pickle_load",
            {"path": str(pkl)}),
        Row(p + "safeload_pkl", "safeload.load raw pickle", f"safeload.load({pkl.name!r})", "safeload_load",
            {"path": str(pkl)}, p + "pickle", store="policy"),
        Row(p + "safeload_exec", "safeload.load execute",
            f"safeload.load({zip_.name!r}, unpickler='execute')", "safeload_load",
            {"path": str(zip_), "unpickler": "execute"}, p + "torch", store="policy"),
    )


def _hf_rows(ds: Dataset, repo: str, targets: bool) -> tuple[Row, ...]:
    st_dir, bin_dir = ds.model_dir(f"{repo}-st"), ds.model_dir(f"{repo}-bin")
    p = f"{repo}."
    cfg = str(st_dir)
    warm_check: tuple[Check, ...] = ()
    first_bin_check: tuple[Check, ...] = ()
    second_bin_check: tuple[Check, ...] = ()
    if targets:
        warm_check = (Check("ratio_max", 1.10, "<= 1.10x transformers", p + "plain_st"),)
        first_bin_check = (Check("ratio_max", 2.0, "<= 2x transformers .bin", p + "plain_bin"),)
        second_bin_check = (Check("ratio_max", 1.10, "<= 1.10x transformers st", p + "plain_st"),)
    return (
        Row(p + "plain_st", "transformers safetensors",
            f"transformers.AutoModel.from_pretrained('{st_dir.name}/', use_safetensors=True)", "hf_plain",
            {"path": str(st_dir), "use_safetensors": True}),
        Row(p + "sl_st_warm", "safeload safetensors, warm",
            f"safeload.transformers.AutoModel.from_pretrained('bench/{repo}-st')  # in store", "hf_safeload",
            {"name": f"bench/{repo}-st", "config_dir": cfg}, p + "plain_st", store="warm", checks=warm_check),
        Row(p + "sl_st_first", "safeload safetensors, first",
            f"safeload.transformers.AutoModel.from_pretrained('bench/{repo}-st')  # empty store",
            "hf_safeload", {"name": f"bench/{repo}-st", "config_dir": cfg}, p + "plain_st", store="cold"),
        Row(p + "plain_bin", "transformers .bin",
            f"transformers.AutoModel.from_pretrained('{bin_dir.name}/', use_safetensors=False)", "hf_plain",
            {"path": str(bin_dir), "use_safetensors": False}),
        Row(p + "sl_bin_first", "safeload .bin, first",
            f"safeload.transformers.AutoModel.from_pretrained('bench/{repo}-bin')  # empty store",
            "hf_safeload", {"name": f"bench/{repo}-bin", "config_dir": cfg}, p + "plain_bin", store="cold",
            checks=first_bin_check),
        Row(p + "sl_bin_warm", "safeload .bin, second",
            f"safeload.transformers.AutoModel.from_pretrained('bench/{repo}-bin')  # converted, in store",
            "hf_safeload", {"name": f"bench/{repo}-bin", "config_dir": cfg}, p + "plain_st", store="warm",
            checks=second_bin_check),
    )


def groups(ds: Dataset, runs: int | None) -> list[Group]:
    """The benchmark plan for ``ds``; ``runs`` overrides every group's run count."""
    s = ds.sizes
    full = s.tag == "full"

    def n(default: int) -> int:
        return runs if runs is not None else default

    verify_repo = ds.model_dir("verify")
    vbytes = ds.nbytes("verify")
    gen_mb = ds.nbytes("gen-st") / _MiB if ds.model_dir("gen-st").exists() else 0.0
    return [
        Group("big", f"{_size(s.big_bytes)} checkpoint, {s.big_count} fp32 tensors (load + read every page)",
              n(5), _load_rows(ds, "big", targets=True)),
        Group("small", f"checkpoint of {s.small_count} small tensors (16x16 fp32)", n(5),
              _load_rows(ds, "small", targets=False)),
        Group("jail", "jail start-up, no torch", n(10), (
            Row("jail.python", "python start, no jail", "python3 -I -S -B -c pass", "python_start"),
            Row("jail.first", "jail start-up, first in process",
                "safeload._jail.launcher.run_worker(<pickle of None>)  # 1st call: one-time probes",
                "jail_start",
                {"call": 1}, "jail.python"),
            Row("jail.start", "jail start-up",
                "safeload._jail.launcher.run_worker(<pickle of None>)  # 2nd call in the process",
                "jail_start",
                {"call": 2}, "jail.python", checks=(Check("abs_max", 0.050, "<= 50 ms"),)),
        )),
        Group("verify", f"verification of a {_size(vbytes)} model in {s.verify_files} files", n(5), (
            Row("verify.sha256", "sha256 x cores",
                f"hashlib.sha256(<{_size(s.sha_bytes)} in memory>) x cores",
                "sha256", {"nbytes": s.sha_bytes}, metric="throughput"),
            Row("verify.sha256_par", "sha256 in threads",
                f"hashlib.sha256(<{_size(s.sha_bytes)} in memory>) in {os.cpu_count()} threads at once",
                "sha256", {"nbytes": s.sha_bytes, "threads": os.cpu_count() or 1}, "verify.sha256",
                "throughput"),
            Row("verify.cold", "cold verification",
                "Store.ingest_owned(<each delivered file>) in threads  # a Hub fetch's hash-in-place step",
                "verify_staged", {"path": str(verify_repo), "pins": ds.pins("verify"), "nbytes": vbytes},
                "verify.sha256", "throughput", "cold",
                (Check("ratio_min", 0.8, ">= 0.8x sha256 x cores", "verify.sha256"),)),
            Row("verify.copy", "cold copy + verification",
                "safeload._trust.resolve.fetch_model('bench/verify')  # directory registry: copy + hash",
                "verify_cold", {"name": "bench/verify", "nbytes": vbytes}, "verify.sha256", "throughput",
                "cold"),
            Row("verify.read", "read the files",
                "read every file of the stored model's folder  # located before the clock", "store_read",
                {"name": "bench/verify"}, store="warm"),
            Row("verify.warm", "warm store + read",
                "safeload._trust.resolve.fetch_model('bench/verify') + read every file  # in store",
                "store_warm",
                {"name": "bench/verify"}, "verify.read", store="warm",
                checks=(Check("ratio_max", 1.05, "<= 1.05x reading", "verify.read"),)),
        )),
        Group("minilm", "from_pretrained: all-MiniLM-L6-v2 (90 MB)", n(5 if full else 1),
              _hf_rows(ds, "minilm", targets=True)),
        Group("gen", f"from_pretrained: generated GPT-2 ({gen_mb:.0f} MB)", n(5 if full else 1),
              _hf_rows(ds, "gen", targets=True)),
    ]
