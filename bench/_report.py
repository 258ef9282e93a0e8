"""Turns results into the printed table, ``results.json``, a markdown table and the PNG chart of ratios."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._rows import Check, Group
from bench._runner import Figures, RowResult

__all__ = ["COLUMNS", "cells", "chart", "machine", "markdown", "print_table", "to_json", "update_readme"]

_MiB = 1 << 20
COLUMNS = ("path", "what ran", "median", "min-max", "ratio", "ratio min-max", "target", "result",
           "host peak RSS", "worker peak RSS")


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
            mem = f"{kb / (1 << 20):.1f} GiB"
    except (OSError, StopIteration):
        pass
    from importlib import metadata

    versions = {}
    for dist in ("torch", "transformers", "safetensors", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    bwrap = shutil.which("bwrap")
    bw = "absent"
    if bwrap:
        bw = subprocess.run([bwrap, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    load = os.getloadavg()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        # Other work on the machine inflates absolute times; ratios are paired run by run for that reason.
        "load average at the end": f"{load[0]:.1f} (1 min), {load[2]:.1f} (15 min)",
        "memory": mem,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        **versions,
        "bubblewrap": bw,
    }


def _fmt_value(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    if metric == "throughput":
        return f"{v / 1e9:.2f} GB/s"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_check(c: Check, got: float | None) -> str:
    if got is None:
        return "-"
    if c.kind in ("ratio_max", "ratio_min", "rss_max"):
        return f"{got:.2f}x"
    if c.kind == "diff_max":
        return f"{got * 1e3:+.0f} ms"
    return f"{got * 1e3:.1f} ms"


def cells(res: RowResult, fig: Figures, table: dict[str, RowResult]) -> list[str]:
    """The row's cells, in :data:`COLUMNS` order."""
    row = res.row
    base = table[row.baseline].row.name if row.baseline and row.baseline in table else ""
    if res.status != "ok":
        word = "n/a" if res.status == "na" else "failed"
        reason = res.reason if len(res.reason) <= 120 else res.reason[:117] + "..."
        msg = f"{word} ({reason})"
        target = "; ".join(c.text for c in row.checks) or "-"
        return [row.name, row.label, msg, "", "", "", target, "miss" if row.checks else "-", "", ""]
    med = _fmt_value(fig.median, row.metric)
    rng = f"{_fmt_value(fig.lo, row.metric)} - {_fmt_value(fig.hi, row.metric)}"
    if fig.ratio is not None:
        ratio = f"{fig.ratio:.2f}x {base}"
        rr = f"{fig.ratio_lo:.2f} - {fig.ratio_hi:.2f}"
    elif row.baseline:
        ratio, rr = f"n/a ({base} unavailable)", ""
    else:
        ratio, rr = "(baseline)", ""
    target = "; ".join(c.text for c in row.checks) or "-"
    if row.checks:
        parts = [f"{'pass' if ok else 'MISS' if ok is False else 'n/a'} {_fmt_check(c, got)}"
                 for c, got, ok in fig.checks]
        result = "; ".join(parts)
    else:
        result = "-"
    host = f"{fig.host_rss / _MiB:.0f} MiB" if fig.host_rss else "-"
    if fig.host_rss_growth is not None:
        host += f" (+{fig.host_rss_growth / _MiB:.0f})"
    worker = f"{fig.worker_rss / _MiB:.0f} MiB" if fig.worker_rss else "-"
    return [row.name, row.label, med, rng, ratio, rr, target, result, host, worker]


def print_table(groups: Sequence[Group], table: dict[str, RowResult], figs: dict[str, Figures],
                mach: dict[str, str], runs_note: str) -> None:
    from rich.console import Console
    from rich.table import Table

    width = max(shutil.get_terminal_size((220, 40)).columns, 220)
    console = Console(width=width, soft_wrap=False)
    console.print(f"[bold]safeload benchmark[/bold]  {runs_note}")
    console.print("  ".join(f"{k}: {v}" for k, v in mach.items()))
    for g in groups:
        t = Table(title=f"{g.title}  ({g.runs} run{'s' if g.runs != 1 else ''})", title_justify="left")
        for col in COLUMNS:
            t.add_column(col, overflow="fold")
        for row in g.rows:
            c = cells(table[row.key], figs[row.key], table)
            if "MISS" in c[7] or c[7] == "miss":
                c[7] = f"[red]{c[7]}[/red]"
            elif c[7].startswith("pass"):
                c[7] = f"[green]{c[7]}[/green]"
            t.add_row(*c)
        console.print(t)


def markdown(groups: Sequence[Group], table: dict[str, RowResult], figs: dict[str, Figures],
             mach: dict[str, str]) -> str:
    """The same table in markdown, for the README (median and ratio cells carry their min-max)."""
    cols = ("path", "what ran", "median (min-max)", "ratio (min-max)", "target", "result",
            "host peak RSS (+growth)", "worker peak RSS")
    lines = ["Measured on: " + "; ".join(f"{k} {v}" for k, v in mach.items()), ""]
    for g in groups:
        lines += [f"**{g.title}** ({g.runs} run{'s' if g.runs != 1 else ''})", "",
                  "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for row in g.rows:
            c = cells(table[row.key], figs[row.key], table)
            med = f"{c[2]} ({c[3]})" if c[3] else c[2]
            ratio = f"{c[4]} ({c[5]})" if c[5] else c[4]
            out = [c[0], f"`{c[1]}`", med, ratio, c[6], c[7], c[8], c[9]]
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in out) + " |")
        lines.append("")
    return "\n".join(lines)


def update_readme(readme: Path, md: str) -> bool:
    """Replace the text between the results markers of ``readme``; False when it has no markers."""
    start, end = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{md}\n{end}{tail}", encoding="utf-8")
    return True


def to_json(groups: Sequence[Group], table: dict[str, RowResult], figs: dict[str, Figures],
            mach: dict[str, str], mode: str) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": mode, "machine": mach, "groups": []}
    for g in groups:
        rows = []
        for row in g.rows:
            res, fig = table[row.key], figs[row.key]
            rows.append({
                "key": row.key, "name": row.name, "ran": row.label, "status": res.status,
                "reason": res.reason, "baseline": row.baseline, "metric": row.metric,
                "median": fig.median, "min": fig.lo, "max": fig.hi,
                "ratio": fig.ratio, "ratio_min": fig.ratio_lo, "ratio_max": fig.ratio_hi,
                "host_peak_rss": fig.host_rss, "host_rss_growth": fig.host_rss_growth,
                "worker_peak_rss": fig.worker_rss,
                "targets": [{"target": c.text, "kind": c.kind, "limit": c.limit, "baseline": c.baseline,
                             "measured": got, "pass": ok} for c, got, ok in fig.checks],
                "runs": res.runs,
            })
        out["groups"].append({"key": g.key, "title": g.title, "runs": g.runs, "rows": rows})
    return out


def chart(groups: Sequence[Group], table: dict[str, RowResult], figs: dict[str, Figures],
          mach: dict[str, str], path: Path) -> None:
    """One horizontal bar per row that has a ratio: median, min-max whiskers, the target as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    vals: list[float] = []
    errs: list[tuple[float, float]] = []
    colours: list[str] = []
    targets: list[float | None] = []
    for g in groups:
        for row in g.rows:
            fig = figs[row.key]
            if fig.ratio is None or fig.ratio_lo is None or fig.ratio_hi is None:
                continue
            base = table[row.baseline].row.name if row.baseline else ""
            labels.append(f"{g.key}: {row.name}  (vs {base})")
            vals.append(fig.ratio)
            errs.append((fig.ratio - fig.ratio_lo, fig.ratio_hi - fig.ratio))
            # The colour says whether every target of the row passed (a row can have targets that are
            # not ratios to this baseline, e.g. "safetensors + 100 ms"); the tick marks the ratio target.
            ratio_checks = [c for c, _, _ in fig.checks
                            if c.kind in ("ratio_max", "ratio_min") and c.baseline == row.baseline]
            if fig.checks:
                colours.append("tab:green" if all(ok for _, _, ok in fig.checks) else "tab:red")
            else:
                colours.append("tab:gray")
            targets.append(ratio_checks[0].limit if ratio_checks else None)
    height = max(3.0, 0.32 * len(labels) + 1.5)
    fig_, ax = plt.subplots(figsize=(12, height))
    ys = list(range(len(labels)))[::-1]
    if labels:
        lo = [e[0] for e in errs]
        hi = [e[1] for e in errs]
        ax.barh(ys, vals, xerr=[lo, hi], color=colours, capsize=2, alpha=0.85)
        for y, t in zip(ys, targets, strict=True):
            if t is not None:
                ax.plot([t, t], [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.set_yticks(ys, labels, fontsize=7)
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _pos: ""))
        ax.axvline(1.0, color="black", linewidth=0.6, linestyle=":")
    ax.set_xlabel("ratio to the baseline named on each bar (median of per-run ratios; whiskers min-max)\n"
                  "black tick = ratio target; red = a target of the row missed, green = all met, grey = none",
                  fontsize=8)
    ax.set_title(f"safeload benchmark: {mach['cpu']}, {mach['memory']}, torch {mach['torch']}", fontsize=9)
    fig_.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig_.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig_)
