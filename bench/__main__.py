"""``python -m bench [--quick] [--runs N] [--out DIR] [--only GROUP,...]``: measure, print, save."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench import _data, _report, _rows, _runner

_REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny inputs, one run each (a CI smoke run)")
    ap.add_argument("--runs", type=int, default=None, help="runs per row (default: 5, 10 or 3 per group)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where inputs and results go (default: bench-out/, or bench-out/quick/)")
    ap.add_argument("--chart", type=Path, default=None,
                    help="PNG chart (default: docs/bench.png after a full default run, else OUT/bench.png)")
    ap.add_argument("--only", default=None, help="comma-separated groups: big,small,jail,verify,minilm,gen")
    ap.add_argument("--parallel", type=int, default=None,
                    help="measurements at once (default 1; 2 with --quick, where timings do not matter)")
    ap.add_argument("--spawn", action="store_true",
                    help="a new interpreter per measurement instead of a fork of a pre-imported server")
    ap.add_argument("--profile", default=None, metavar="ROW,...",
                    help="run these rows (results.json keys, e.g. big.safeload_legacy) once under cProfile")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: print and plot OUT/results.json again")
    a = ap.parse_args(argv)

    out = (a.out or (_REPO / "bench-out" / ("quick" if a.quick else ""))).resolve()
    sizes = _data.QUICK if a.quick else _data.FULL
    runs = 1 if a.quick and a.runs is None else a.runs
    parallel = a.parallel or (2 if a.quick else 1)
    # Only a complete default run may replace the chart the README shows.
    canonical = not (a.quick or a.out or a.only or a.runs)
    chart = a.chart or (_REPO / "docs" / "bench.png" if canonical else out / "bench.png")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.monotonic()
    ds = _data.prepare(out, sizes, sys.stderr)
    groups = _rows.groups(ds, runs)
    if a.profile:
        keys = a.profile.split(",")
        by_key = {r.key: r for g in groups for r in g.rows}
        unknown = [k for k in keys if k not in by_key]
        if unknown:
            ap.error(f"unknown rows {unknown}; known: {', '.join(by_key)}")
        _runner.profile_rows([by_key[k] for k in keys], ds, out / "work-profile", log)
        return 0
    if a.only:
        wanted = set(a.only.split(","))
        groups = [g for g in groups if g.key in wanted]
    log(f"bench: inputs ready after {time.monotonic() - start:.1f} s")
    if a.report_only:
        table = _runner.from_json(groups, json.loads((out / "results.json").read_text()))
    else:
        table = _runner.run_groups(groups, ds, out / "work", log, parallel=parallel, spawn=a.spawn)
    log(f"bench: measured after {time.monotonic() - start:.1f} s")
    figs = {k: _runner.Figures.of(r, table) for k, r in table.items()}
    mach = (json.loads((out / "results.json").read_text())["machine"] if a.report_only
            else _report.machine())
    note = f"({'--quick, ' if a.quick else ''}{time.monotonic() - start:.0f} s; inputs in {ds.root})"
    _report.print_table(groups, table, figs, mach, note)
    if not a.report_only:
        dump = _report.to_json(groups, table, figs, mach, sizes.tag)
        (out / "results.json").write_text(json.dumps(dump, indent=1))
    md = _report.markdown(groups, table, figs, mach)
    (out / "results.md").write_text(md)
    if canonical:
        _report.update_readme(_REPO / "bench" / "README.md", md)
    _report.chart(groups, table, figs, mach, chart)
    log(f"bench: wrote {out / 'results.json'}, {out / 'results.md'} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
