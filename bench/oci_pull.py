"""Cold pull and warm load of an OCI model (issue 11's speed targets), against the ``oras`` client.

    .venv/bin/python -m bench.oci_pull [--size-mib 2048] [--files 4] [--runs 3] [--dir /tmp/x]

A real ``docker-registry`` (distribution 2.8) on 127.0.0.1 serves a model of ``--files`` layers of
incompressible bytes, pushed by the ``oras`` client. Measured in the same run, pairs alternating:

- ``oras pull``: the ``oras`` Python client pulling the artifact into an empty folder (it checks no
  digest: the bytes are written as they arrive);
- ``safeload cold``: ``fetch_model`` of the pinned manifest digest into an empty store: the manifest is
  hashed against the pin, every blob is downloaded by the fetch jail (capped at its descriptor), hashed
  against its descriptor and pin, and published read-only;
- ``read files`` / ``safeload warm``: reading every file of the stored model once, against
  ``fetch_model`` of the model already in the store (one ``stat`` per file, no re-hash) and the same read.

Targets: cold >= 0.8x the throughput of ``oras pull``; warm adds <= 5% to reading the files.
Prints a table, then the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench._fetchbench import GiB, median, pairs, print_table, read_all, rmtree, write_random_files
from safeload._trust.resolve import fetch_model
from safeload.policy import Policy, parse_policy
from tests.helpers.ociregistry import OciRegistry, oras_push


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="safeload-bench-oci-", dir=args.dir))
    registry = OciRegistry.start(root / "registry")
    try:
        import oras.client

        pins = write_random_files(root / "model", args.size_mib << 20, args.files)
        total = sum((root / "model" / n).stat().st_size for n in pins)
        cwd = os.getcwd()
        os.chdir(root / "model")  # oras titles each layer by the path it is given
        try:
            ref = f"{registry.host}/bench/model:v1"
            digest = oras_push(registry, ref, {n: root / "model" / n for n in pins})
        finally:
            os.chdir(cwd)
        shutil.rmtree(root / "model")  # the registry's storage holds the only copy

        def policy(store: Path) -> Policy:
            return parse_policy(
                f'version = 1\nstore = "{store}"\n[registries.oci]\nkind = "oci"\n'
                f'endpoint = "{registry.endpoint}"\n[models."bench/model"]\nregistry = "oci"\n'
                f'repo = "bench/model"\nrevision = "{digest}"\n[models."bench/model".files]\n'
                + "".join(f'"{n}" = "{d}"\n' for n, d in pins.items())
            )

        client = oras.client.OrasClient(hostname=registry.host, insecure=True)

        def oras_pull(i: int) -> None:
            client.pull(target=f"{registry.host}/bench/model@{digest}", outdir=str(root / f"oras-{i}"))

        def safeload_cold(i: int) -> None:
            fetch_model("bench/model", policy=policy(root / f"store-{i}"), progress=False)

        def cleanup(i: int) -> None:
            rmtree(root / f"oras-{i}")
            if i > 0:
                rmtree(root / f"store-{i}")  # store-0 stays for the warm rows

        oras_s, cold_s = pairs(args.runs, oras_pull, safeload_cold, cleanup)
        warm_policy = policy(root / "store-0")
        files = [fetch_model("bench/model", policy=warm_policy, progress=False).folder / n for n in pins]
        reads, warms = [], []
        for _ in range(5):
            reads.append(read_all(files))
            t = time.perf_counter()
            fetch_model("bench/model", policy=warm_policy, progress=False)
            load = time.perf_counter() - t
            warms.append(load + read_all(files))
        cold_ratio = median([o / c for o, c in zip(oras_s, cold_s, strict=True)])  # throughput ratio
        warm_ratio = median([w / r for w, r in zip(warms, reads, strict=True)])
        result = {
            "model": f"{total / GiB:.2f} GiB in {args.files} layers",
            "runs": args.runs,
            "oras_pull_s": round(median(oras_s), 3),
            "safeload_cold_s": round(median(cold_s), 3),
            "cold_vs_oras": round(cold_ratio, 3),
            "read_files_s": round(median(reads), 4),
            "warm_load_and_read_s": round(median(warms), 4),
            "warm_vs_read": round(warm_ratio, 4),
        }
        o, c = result["oras_pull_s"], result["safeload_cold_s"]
        print_table(
            f"OCI pull, {result['model']}, loopback docker-registry, {args.runs} runs",
            [
                ("oras pull (verifies nothing)", f"{o:.2f}", f"{total / GiB / o:.2f}", "1.00", ""),
                (
                    "safeload cold (jailed, hashed, stored)",
                    f"{c:.2f}",
                    f"{total / GiB / c:.2f}",
                    f"{cold_ratio:.2f}x",
                    ">= 0.8x oras " + ("ok" if cold_ratio >= 0.8 else "MISSED"),
                ),
                ("read files", f"{result['read_files_s']:.3f}", "", "1.00", ""),
                (
                    "safeload warm + read files",
                    f"{result['warm_load_and_read_s']:.3f}",
                    "",
                    f"{warm_ratio:.3f}x",
                    "<= 1.05x read " + ("ok" if warm_ratio <= 1.05 else "MISSED"),
                ),
            ],
        )
        print(json.dumps(result))
    finally:
        registry.stop()
        rmtree(root)


if __name__ == "__main__":
    main()
