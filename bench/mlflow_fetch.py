"""MLflow: cold fetch against ``mlflow.artifacts.download_artifacts``, warm ``load_model`` against MLflow's.

    .venv/bin/python -m bench.mlflow_fetch [--size-mib 512] [--runs 3] [--warm-runs 9] [--dir /tmp/x]

A real ``mlflow server`` (PyPI's mlflow, SQLite backend, artifacts proxied through
``mlflow-artifacts:/``) on 127.0.0.1 holds a BERT masked LM of about ``--size-mib`` MiB of random weights,
logged by ``mlflow.transformers.log_model`` (safetensors, with its tokenizer), and pinned with
``safeload pin mlflow://...``. Measured in the same run:

- cold fetch, pairs alternating: ``mlflow.artifacts.download_artifacts("models:/NAME/VERSION")`` into an
  empty folder (it checks no digest and trusts the server's ``artifact_uri``), against what ``safeload
  prefetch`` does (``fetch_model`` into an empty store: ``model-versions/get`` and the listing checked
  against the pins, every file downloaded by the fetch jail capped at its pinned size, hashed and published
  read-only);
- warm ``load_model`` in one process, shuffled rounds after a warm-up round: ``mlflow.transformers.
  load_model`` of the downloaded folder (MLflow's own load, with no download), ``mlflow.transformers.
  load_model("models:/...")`` (what users write: MLflow downloads the model again on every call), and
  ``safeload.mlflow.transformers.load_model("models:/...")`` with the model in the store (one ``stat``
  per file, MLmodel checked, the transformers drop-in, a pipeline as MLflow returns);
- the same warm rows for a scikit-learn model saved as skops, when ``safeload.mlflow.sklearn`` exists.

Ratios are medians of per-pair (cold) or per-round (warm) ratios. Prints a table, then the figures as
one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._fetchbench import GiB, median, pairs, print_table, rmtree
from tests.helpers.mlflowserver import MlflowServer

# Named as pinned below; loads resolve models:/NAME/VERSION to these entries.
_BERT, _SKLEARN = "bench-bert", "bench-sklearn"


def _bert(size_mib: int) -> Any:
    """A BERT masked LM of about ``size_mib`` MiB of fp32 weights (12 h^2 parameters per layer)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    hidden = 1024 if size_mib >= 96 else 256
    layers = max(1, round((size_mib << 20) / (12 * hidden * hidden * 4)))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden, max_position_embeddings=64,
    )  # fmt: skip
    model: Any = BertForMaskedLM(config)
    return model.eval()


def _log(server: MlflowServer, size_mib: int, root: Path, sklearn: bool) -> dict[str, str]:
    """Log the models with mlflow's own client; name -> registered version."""
    import mlflow
    import transformers

    from tests.helpers.models import write_tokenizer

    tok = transformers.AutoTokenizer.from_pretrained(write_tokenizer(root / "tok"))
    versions: dict[str, str] = {}
    with mlflow.start_run():
        info = mlflow.transformers.log_model(
            {"model": _bert(size_mib), "tokenizer": tok}, name="bert", task="fill-mask",
            pip_requirements=["transformers", "torch"], registered_model_name=_BERT,
        )  # fmt: skip
    versions[_BERT] = str(info.registered_model_version)
    if sklearn:
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(0)
        x = rng.normal(size=(2000, 64))
        clf = LogisticRegression(max_iter=200).fit(x, (x[:, 0] + x[:, 1] > 0).astype(int))
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                clf, name="clf", serialization_format="skops", pip_requirements=["scikit-learn"],
                registered_model_name=_SKLEARN,
            )  # fmt: skip
        versions[_SKLEARN] = str(info.registered_model_version)
    return versions


def _warm(paths: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Every path once to warm up, then ``runs`` shuffled rounds; seconds per path."""
    times: dict[str, list[float]] = {k: [] for k in paths}
    for round_ in range(runs + 1):
        order = list(paths)
        random.shuffle(order)
        for key in order:
            gc.collect()
            t = time.perf_counter()
            paths[key]()
            if round_:
                times[key].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="cold fetch pairs")
    ap.add_argument("--warm-runs", type=int, default=9, help="warm load rounds")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="safeload-bench-mlflow-", dir=args.dir))
    server = MlflowServer.start(root / "server")
    try:
        import mlflow

        from safeload._trust.pinning import pin_model
        from safeload._trust.resolve import fetch_model
        from safeload.policy import Policy, load_policy

        mlflow.set_tracking_uri(server.endpoint)
        sklearn = importlib.util.find_spec("safeload.mlflow.sklearn") is not None
        versions = _log(server, args.size_mib, root, sklearn)
        policy_path = root / "trust.toml"
        policy_path.write_text(
            f'version = 1\nstore = "{root / "store"}"\n'
            f'[registries.ml]\nkind = "mlflow"\nendpoint = "{server.endpoint}"\n'
        )
        sklearn_note = "" if sklearn else "safeload.mlflow.sklearn is not there"
        for name, version in versions.items():
            try:
                pin_model(f"mlflow://ml/{name}/{version}", policy_path=policy_path, name=name)
            except Exception as exc:  # a row that cannot run says why
                if name != _SKLEARN:
                    raise
                sklearn, sklearn_note = False, f"pin failed: {exc}"[:200]
        base = load_policy(policy_path)
        bert_uri = f"models:/{_BERT}/{versions[_BERT]}"
        entry = base.models[_BERT]
        total = sum(entry.sizes.values())

        def policy(store: Path) -> Policy:
            from dataclasses import replace

            return replace(base, store=store)

        # ------------------------------------------------------------------------------- cold fetch
        def plain(i: int) -> None:
            mlflow.artifacts.download_artifacts(artifact_uri=bert_uri, dst_path=str(root / f"plain-{i}"))

        def safeload_cold(i: int) -> None:
            fetch_model(_BERT, policy=policy(root / f"store-{i}"), progress=False)

        def cleanup(i: int) -> None:
            rmtree(root / f"plain-{i}")
            rmtree(root / f"store-{i}")

        plain_s, cold_s = pairs(args.runs, plain, safeload_cold, cleanup)
        cold_ratio = median([p / c for p, c in zip(plain_s, cold_s, strict=True)])  # throughput ratio

        # -------------------------------------------------------------------------------- warm loads
        import safeload.mlflow.transformers

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=bert_uri, dst_path=str(root / "local")))
        fetch_model(_BERT, policy=base, progress=False)
        paths: dict[str, Callable[[], object]] = {
            "tf.local": lambda: mlflow.transformers.load_model(str(local)),
            "tf.uri": lambda: mlflow.transformers.load_model(bert_uri),
            "tf.safeload": lambda: safeload.mlflow.transformers.load_model(bert_uri, policy=base),
        }
        if sklearn:
            safe_sk: Any = importlib.import_module("safeload.mlflow.sklearn")
            sk_uri = f"models:/{_SKLEARN}/{versions[_SKLEARN]}"
            sk_local = mlflow.artifacts.download_artifacts(artifact_uri=sk_uri, dst_path=str(root / "sk"))
            fetch_model(_SKLEARN, policy=base, progress=False)
            paths["sk.local"] = lambda: mlflow.sklearn.load_model(sk_local)
            paths["sk.safeload"] = lambda: safe_sk.load_model(sk_uri, policy=base)
            try:
                paths["sk.safeload"]()
            except Exception as exc:  # a row that cannot run says why
                del paths["sk.local"], paths["sk.safeload"]
                sklearn, sklearn_note = False, f"load failed: {exc}"[:200]
        times = _warm(paths, args.warm_runs)

        def ratio(key: str, base_key: str) -> float:
            return median([o / p for o, p in zip(times[key], times[base_key], strict=True)])

        result: dict[str, object] = {
            "model": f"{total / GiB:.2f} GiB, {len(entry.files)} files (transformers, safetensors)",
            "runs": args.runs,
            "warm_runs": args.warm_runs,
            "download_artifacts_s": round(median(plain_s), 3),
            "safeload_cold_s": round(median(cold_s), 3),
            "cold_vs_download_artifacts": round(cold_ratio, 3),
            "tf_mlflow_local_s": round(median(times["tf.local"]), 4),
            "tf_mlflow_uri_s": round(median(times["tf.uri"]), 4),
            "tf_safeload_s": round(median(times["tf.safeload"]), 4),
            "tf_safeload_vs_local": round(ratio("tf.safeload", "tf.local"), 3),
            "tf_safeload_vs_uri": round(ratio("tf.safeload", "tf.uri"), 3),
        }
        p, c = result["download_artifacts_s"], result["safeload_cold_s"]
        assert isinstance(p, float) and isinstance(c, float)
        rows = [
            ("cold: mlflow.artifacts.download_artifacts (verifies nothing)", f"{p:.2f}",
             f"{total / GiB / p:.2f}", "1.00", ""),
            ("cold: safeload prefetch (jailed, hashed, stored)", f"{c:.2f}", f"{total / GiB / c:.2f}",
             f"{cold_ratio:.2f}x", f"{median([b - a for a, b in zip(plain_s, cold_s, strict=True)]):+.2f} s"),
            ("warm: mlflow.transformers.load_model(local folder)", f"{median(times['tf.local']):.3f}", "",
             "1.00", ""),
            ("warm: mlflow.transformers.load_model(models:/, downloads again)",
             f"{median(times['tf.uri']):.3f}", "", f"{ratio('tf.uri', 'tf.local'):.2f}x", ""),
            ("warm: safeload.mlflow.transformers.load_model(models:/)",
             f"{median(times['tf.safeload']):.3f}", "", f"{ratio('tf.safeload', 'tf.local'):.2f}x",
             f"{ratio('tf.safeload', 'tf.uri'):.2f}x models:/"),
        ]  # fmt: skip
        if sklearn:
            result["sk_mlflow_local_s"] = round(median(times["sk.local"]), 4)
            result["sk_safeload_s"] = round(median(times["sk.safeload"]), 4)
            result["sk_safeload_vs_local"] = round(ratio("sk.safeload", "sk.local"), 3)
            rows += [
                ("warm: mlflow.sklearn.load_model(local folder, skops)", f"{median(times['sk.local']):.4f}",
                 "", "1.00", ""),
                ("warm: safeload.mlflow.sklearn.load_model(models:/)", f"{median(times['sk.safeload']):.4f}",
                 "", f"{ratio('sk.safeload', 'sk.local'):.2f}x", ""),
            ]  # fmt: skip
        else:
            result["sklearn"] = f"n/a ({sklearn_note})"
            rows.append(("warm: sklearn (skops)", "", "", "", f"n/a ({sklearn_note})"[:60]))
        print_table(
            f"MLflow, {result['model']}, loopback mlflow server, {args.runs} cold pairs, "
            f"{args.warm_runs} warm rounds",
            rows,
        )
        print(json.dumps(result))
    finally:
        server.stop()
        rmtree(root)


if __name__ == "__main__":
    main()
