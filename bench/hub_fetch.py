"""Cold fetch from a Hub-compatible server: safeload's confined fetch against plain huggingface_hub.

    .venv/bin/python -m bench.hub_fetch [--size-mib 512] [--files 2] [--runs 3] [--dir /tmp/x]

A real Hub-compatible server (olah, serving a git repository with LFS files) on 127.0.0.1 holds a model
of ``--files`` incompressible files. Measured in the same run, pairs alternating:

- ``huggingface_hub``: ``snapshot_download`` at the pinned commit into an empty cache (it checks no
  sha256, and trusts the server's ETag as a path in its cache);
- ``safeload cold``: ``fetch_model`` of the same commit into an empty store: the jail (its own uid,
  read-only root, seccomp, one connection per request handed over by the host) downloads into its staging
  folder under the header rules, then every file is hashed against its pin and published read-only.

olah serves LFS files at tens of MB/s here, so both rows are bound by the server; the difference is still
the price of the confinement and the verification (issue 14 asked for it measured).
Prints a table, then the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench._fetchbench import GiB, median, pairs, print_table, rmtree, write_random_files
from safeload._trust.resolve import fetch_model
from safeload.policy import Policy, parse_policy
from tests.helpers.hubserver import HubServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    root = Path(tempfile.mkdtemp(prefix="safeload-bench-hub-", dir=args.dir))
    server = HubServer.start(root / "hub")
    try:
        from huggingface_hub import snapshot_download

        pins = write_random_files(root / "model", args.size_mib << 20, args.files)
        files: dict[str, bytes | Path] = {n: root / "model" / n for n in pins}
        files["config.json"] = b'{"model_type": "bert"}'
        commit = server.add_repo("bench/model", files, lfs=list(pins))
        rmtree(root / "model")
        total = (args.size_mib << 20) // args.files * args.files

        def policy(store: Path) -> Policy:
            return parse_policy(
                f'version = 1\nstore = "{store}"\n[registries.hub]\nkind = "huggingface"\n'
                f'endpoint = "{server.endpoint}"\n[models."bench/model"]\nregistry = "hub"\n'
                f'repo = "bench/model"\nrevision = "{commit}"\n[models."bench/model".files]\n'
                + "".join(f'"{n}" = "{d}"\n' for n, d in pins.items())
            )

        def plain(i: int) -> None:
            snapshot_download(
                "bench/model",
                revision=commit,
                cache_dir=str(root / f"hf-{i}"),
                endpoint=server.endpoint,
                allow_patterns=list(pins),
            )

        def safeload_cold(i: int) -> None:
            fetch_model("bench/model", policy=policy(root / f"store-{i}"), progress=False)

        def cleanup(i: int) -> None:
            rmtree(root / f"hf-{i}")
            rmtree(root / f"store-{i}")

        plain_s, cold_s = pairs(args.runs, plain, safeload_cold, cleanup)
        ratio = median([p / c for p, c in zip(plain_s, cold_s, strict=True)])  # throughput ratio
        result = {
            "model": f"{total / GiB:.2f} GiB in {args.files} LFS files",
            "runs": args.runs,
            "huggingface_hub_s": round(median(plain_s), 3),
            "safeload_cold_s": round(median(cold_s), 3),
            "cold_vs_huggingface_hub": round(ratio, 3),
            "extra_s": round(median([c - p for p, c in zip(plain_s, cold_s, strict=True)]), 3),
        }
        p, c = result["huggingface_hub_s"], result["safeload_cold_s"]
        print_table(
            f"Hub fetch, {result['model']}, loopback olah, {args.runs} runs",
            [
                (
                    "huggingface_hub snapshot_download (verifies nothing)",
                    f"{p:.2f}",
                    f"{total / GiB / p:.2f}",
                    "1.00",
                    "",
                ),
                (
                    "safeload cold (jailed, hashed, stored)",
                    f"{c:.2f}",
                    f"{total / GiB / c:.2f}",
                    f"{ratio:.2f}x",
                    f"{result['extra_s']:+.2f} s",
                ),
            ],
        )
        print(json.dumps(result))
    finally:
        server.stop()
        rmtree(root)


if __name__ == "__main__":
    main()
