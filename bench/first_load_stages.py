"""Where a ``.bin`` model's first load goes, stage by stage (issue 4's first-load target).

    .venv/bin/python -m bench.first_load_stages [--model minilm|gen] [--runs 3] [--out bench-out]

Uses the inputs ``python -m bench`` generated under ``OUT/data-full`` (the same ``directory`` registry and
pins as the ``hf_safeload`` rows with ``store = "cold"``). Each run is a fresh interpreter that imports
torch, transformers and ``safeload.transformers`` and the model's modelling module before the clock, as
the benchmark does, then times ``safeload.transformers.AutoModel.from_pretrained("bench/<model>-bin")``
on an empty store with a timer around each stage:

- ``import`` safeload modules the call imports on first use (loader, launcher: the rest come with the
  drop-in);
- ``ingest`` the store's copy + sha256 of each file (the ``.bin`` dominates), ``fetch`` all of fetch_model;
- ``jail`` ``safeload._jail.launcher.run_worker`` (bubblewrap up, the worker parses the pickle), ``manifest``
  validation and tensor views, ``write`` the converted safetensors file, ``transformers`` its own
  ``from_pretrained`` on the derived folder, ``touch`` reading a byte of every page of the result.

Then the same for plain ``transformers.AutoModel.from_pretrained(<folder>, use_safetensors=False)``, and
the machine's primitives on the ``.bin``: sha256 alone, a page-cache read, a kernel copy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import functools, json, os, sys, tempfile, time, shutil
from pathlib import Path
mode, data_root, repo = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                  TRANSFORMERS_VERBOSITY="error")
import numpy, torch, safetensors.torch, transformers, transformers.modeling_utils
from bench import _data
from bench._child import _import_model_class, _touch
ds = _data.Dataset(data_root, _data.FULL)
_import_model_class(str(ds.model_dir(f"{repo}-st")))
out = {}
if mode == "plain":
    t0 = time.perf_counter()
    m = transformers.AutoModel.from_pretrained(str(ds.model_dir(f"{repo}-bin")), use_safetensors=False,
                                               local_files_only=True)
    t1 = time.perf_counter(); _touch(m); t2 = time.perf_counter()
    print(json.dumps({"total": t2 - t0, "touch": t2 - t1})); sys.exit(0)
import safeload.transformers as st
store = Path(tempfile.mkdtemp(prefix="stages-", dir=str(data_root.parent)))
policy = store.with_suffix(".toml")
policy.write_text(ds.policy_text(store))
os.environ["SAFELOAD_POLICY"] = str(policy)
t_imp = time.perf_counter()
import safeload._trust.resolve as rs
import safeload._trust.store as sto
import safeload._loading.loader as ld
import safeload._jail.launcher as la
import safeload._loading.convert as cv
imported = time.perf_counter() - t_imp
spent = {}

def timer(owner, name, label):
    real = getattr(owner, name)
    @functools.wraps(real)
    def wrapped(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapped)

import safeload._integrations.folder as fo  # imported with safeload.transformers: holds its own fetch_model
for owner, name, label in [(fo, "fetch_model", "fetch"), (sto.Store, "ingest_copy", "ingest (summed)"),
                           (la, "run_worker", "jail"), (ld, "parse_manifest", "manifest"),
                           (ld, "_raw_storages", "manifest"), (cv, "_atomic_save", "write")]:
    timer(owner, name, label)
real_fp = transformers.AutoModel.from_pretrained.__func__
def hf(cls, *a, **k):
    t = time.perf_counter()
    try:
        return real_fp(cls, *a, **k)
    finally:
        spent["transformers"] = time.perf_counter() - t
transformers.AutoModel.from_pretrained = classmethod(hf)
try:
    t0 = time.perf_counter()
    m = st.AutoModel.from_pretrained(f"bench/{repo}-bin")
    t1 = time.perf_counter(); _touch(m); t2 = time.perf_counter()
finally:
    from bench._runner import _rmtree
    _rmtree(store)
    policy.unlink()
spent.update(total=t2 - t0 + imported, touch=t2 - t1, **{"import": imported})
print(json.dumps(spent))
"""

_PRIMITIVES = r"""
import hashlib, json, mmap, os, sys, tempfile, time
src = sys.argv[1]
def best(fn, n=3):
    xs = []
    for _ in range(n):
        t = time.perf_counter(); fn(); xs.append(time.perf_counter() - t)
    return min(xs)
def read():
    buf = bytearray(16 << 20)
    with open(src, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
def sha():
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        hashlib.sha256(m).digest()
def kcopy():
    fd = os.open(src, os.O_RDONLY)
    out, path = tempfile.mkstemp(dir=os.path.dirname(src))
    try:
        while os.copy_file_range(fd, out, 1 << 30):
            pass
    finally:
        os.close(fd); os.close(out); os.unlink(path)
read()
print(json.dumps({"read": best(read), "sha256": best(sha), "kernel copy": best(kcopy),
                  "bytes": os.path.getsize(src)}))
"""

_ORDER = ("import", "fetch", "ingest (summed)", "jail", "manifest", "write", "transformers", "touch", "total")


def _run(code: str, *args: str) -> dict[str, float]:
    env = {"PYTHONPATH": str(_REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=_REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"measurement failed ({' '.join(args)}):\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("minilm", "gen"), default="minilm")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=_REPO / "bench-out",
                    help="where `python -m bench` put its inputs (default: bench-out/)")
    a = ap.parse_args()
    data = a.out.resolve() / "data-full"
    if not (data / "registry" / f"{a.model}-bin").is_dir():
        sys.exit(f"no inputs under {data}: run `python -m bench --only {a.model} --runs 1` once first")
    runs: list[dict[str, float]] = []
    plain: list[float] = []
    for _ in range(a.runs):  # alternated, so both see the same background load
        runs.append(_run(_CHILD, "safeload", str(data), a.model))
        plain.append(_run(_CHILD, "plain", str(data), a.model)["total"])
    base = statistics.median(plain)
    print(f"{a.model}: first .bin load on an empty store, {a.runs} runs, medians in ms")
    for key in _ORDER:
        values = [r[key] for r in runs if key in r]
        if values:
            med = statistics.median(values)
            print(f"  {key:24s} {med * 1000:8.1f}   {med / base:5.2f}x of plain")
    print(f"  {'plain .bin load':24s} {base * 1000:8.1f}   (transformers, use_safetensors=False)")
    prim = _run(_PRIMITIVES, str(data / "registry" / f"{a.model}-bin" / "pytorch_model.bin"))
    mib = prim.pop("bytes") / (1 << 20)
    for key, seconds in prim.items():
        print(f"  {key + ' of the .bin':24s} {seconds * 1000:8.1f}   {seconds / base:5.2f}x of plain  "
              f"({mib / seconds:.0f} MiB/s)")


if __name__ == "__main__":
    main()
