"""Evaluation attestations bound to the loaded bytes: written by ``safeload attest`` with generated
keys, verified through ``require_evaluation`` at load time and by ``safeload verify``; each attacking
case (other digests, another signer, a failing metric, a truncated or edited attestation, an uncovered
weight file, none at all) is refused with a typed error and publishes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from safeload._trust.attestation import is_weight_file
from safeload._trust.resolve import fetch_model
from safeload.cli import main
from safeload.errors import EvaluationError, IntegrityError, PolicyError, SignatureError
from safeload.policy import load_policy
from tests.helpers.signing import generate_key
from tests.helpers.trust import write_policy

WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(64))
SECOND = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(64, 128))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "registry" / "acme" / "clf"
    model.mkdir(parents=True)
    (model / "config.json").write_bytes(b'{"model_type": "bert"}')
    (model / "model-00001.safetensors").write_bytes(WEIGHTS)
    (model / "model-00002.safetensors").write_bytes(SECOND)
    keys = tmp_path / "keys"
    eval_key, other = generate_key(keys, "eval"), generate_key(keys, "other")
    (tmp_path / "metrics.json").write_text(
        json.dumps({"f1": {"value": 0.93, "confidence_interval": [0.91, 0.95]}, "accuracy": 0.95})
    )
    return {
        "root": tmp_path,
        "model": model,
        "eval_key": eval_key.private,
        "eval_pub": eval_key.public,
        "other_key": other.private,
        "other_pub": other.public,
    }


def _attest(world: dict[str, Path], *extra: str, key: str = "eval_key", metrics: Path | None = None) -> None:
    argv = [
        "attest",
        str(world["model"]),
        "--metrics",
        str(metrics or world["root"] / "metrics.json"),
        "--key",
        str(world[key]),
        "--dataset",
        "reviews",
        "--evaluator-revision",
        "a" * 40,
        *extra,
    ]
    assert main(argv) == 0


def _policy(
    world: dict[str, Path],
    *,
    threshold: str = ">= 0.92",
    signer_pub: str = "eval_pub",
    audit_log: Path | None = None,
) -> Path:
    model = world["model"]
    files = {p.name: _sha(p.read_bytes()) for p in model.iterdir() if p.name != "evaluation.intoto.jsonl"}
    return write_policy(
        world["root"] / "trust.toml",
        store=world["root"] / "store",
        audit_log=audit_log,
        registries={"local": {"kind": "directory", "path": str(world["root"] / "registry")}},
        signers={"eval-pipeline": {"kind": "key", "public_key": str(world[signer_pub])}},
        models={
            "acme/clf": {
                "registry": "local",
                "repo": "acme/clf",
                "files": files,
                "require_evaluation": {"signer": "eval-pipeline", "metrics": {"f1": threshold}},
            }
        },
    )


def _nothing_published(world: dict[str, Path]) -> None:
    manifests = world["root"] / "store" / "manifests"
    assert not manifests.exists() or [p for p in manifests.rglob("*.json")] == []


def test_an_attested_model_loads_and_carries_its_verified_metrics(world: dict[str, Path]) -> None:
    _attest(world)
    policy = load_policy(_policy(world))
    fetched = fetch_model("acme/clf", policy=policy, progress=False)
    assert fetched.evaluation is not None
    f1 = fetched.evaluation.metric("f1")
    assert f1 is not None and f1.value == 0.93 and f1.confidence_interval == (0.91, 0.95)
    assert fetched.evaluation.dataset == "reviews" and fetched.evaluation.evaluator_revision == "a" * 40
    assert "evaluation.intoto.jsonl" not in fetched.files  # the attestation is not a model file
    again = fetch_model("acme/clf", policy=policy, progress=False)  # warm: from the store's record
    assert again.evaluation is not None and again.evaluation.metric("f1") == f1


def test_an_attestation_over_other_digests_is_refused(world: dict[str, Path]) -> None:
    _attest(world)
    (world["model"] / "model-00001.safetensors").write_bytes(WEIGHTS[:-1] + b"\xff")  # swapped after review
    with pytest.raises(IntegrityError, match="evaluated another artifact than the one deployed"):
        fetch_model("acme/clf", policy=load_policy(_policy(world)), progress=False)
    _nothing_published(world)


def test_an_attestation_from_another_signer_is_refused(world: dict[str, Path]) -> None:
    _attest(world, key="other_key")
    with pytest.raises(SignatureError, match="eval-pipeline"):
        fetch_model("acme/clf", policy=load_policy(_policy(world)), progress=False)
    _nothing_published(world)


def test_a_failing_metric_is_refused_naming_it(world: dict[str, Path]) -> None:
    _attest(world)
    with pytest.raises(EvaluationError, match=r"f1 = 0\.93 fails the policy's requirement f1 >= 0\.95"):
        fetch_model("acme/clf", policy=load_policy(_policy(world, threshold=">= 0.95")), progress=False)
    _nothing_published(world)


def test_a_truncated_or_edited_attestation_is_refused(world: dict[str, Path]) -> None:
    _attest(world)
    path = world["model"] / "evaluation.intoto.jsonl"
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(SignatureError):
        fetch_model("acme/clf", policy=load_policy(_policy(world)), progress=False)
    bundle = json.loads(original)
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["metrics"][1]["value"] = 0.99  # a better f1, same signature
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(bundle) + "\n")
    shutil.rmtree(world["root"] / "store", ignore_errors=True)
    with pytest.raises(SignatureError, match="does not verify"):
        fetch_model("acme/clf", policy=load_policy(_policy(world)), progress=False)
    _nothing_published(world)


def test_a_weight_file_the_evaluation_does_not_cover_is_refused(world: dict[str, Path]) -> None:
    late = world["model"] / "model-00002.safetensors"
    held = late.read_bytes()
    late.unlink()
    _attest(world)  # evaluated without the second shard
    late.write_bytes(held)
    with pytest.raises(IntegrityError, match=r"does not cover model-00002\.safetensors"):
        fetch_model("acme/clf", policy=load_policy(_policy(world)), progress=False)
    _nothing_published(world)


def test_a_model_without_an_attestation_is_refused(world: dict[str, Path]) -> None:
    with pytest.raises(EvaluationError, match="requires an evaluation attested by 'eval-pipeline'"):
        fetch_model("acme/clf", policy=load_policy(_policy(world)), progress=False)
    _nothing_published(world)


def test_the_gate_passes_an_attested_model_and_fails_a_swapped_one(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _attest(world)
    audit_log = world["root"] / "audit.jsonl"
    policy = _policy(world, audit_log=audit_log)
    capsys.readouterr()
    assert main(["verify", "--gate", "acme/clf", "--policy", str(policy), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verdict"] == "pass" and verdict["gate"] == "acme/clf"
    assert {c["check"]: c["ok"] for c in verdict["checks"]} == {
        "fetch": True,
        "pins": True,
        "signature": True,
        "evaluation": True,
        "datasets": True,
    }
    assert verdict["metrics"] == {"accuracy": 0.95, "f1": 0.93}
    assert verdict["files"]["model-00001.safetensors"] == _sha(WEIGHTS)
    assert main(["verify", "--policy", str(policy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["evaluation"] == "verified"

    # The same gate against a policy whose pins name swapped weights: the attestation no longer holds.
    (world["model"] / "model-00001.safetensors").write_bytes(WEIGHTS[:-1] + b"\xee")
    swapped = _policy(world, audit_log=audit_log)
    assert main(["verify", "--gate", "acme/clf", "--policy", str(swapped), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["verdict"] == "fail"
    failed = {c["check"] for c in verdict["checks"] if not c["ok"]}
    assert "fetch" in failed and "evaluated another artifact" in verdict["checks"][0]["detail"]
    decisions = [
        json.loads(line)["decision"]
        for line in audit_log.read_text().splitlines()
        if json.loads(line)["decision"].startswith("gate-")
    ]
    assert decisions == ["gate-pass", "gate-fail"]


def test_the_bom_reports_only_attested_metrics(world: dict[str, Path]) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    _attest(world)
    policy = _policy(world)
    (world["model"] / "metrics.json").write_text('{"f1": 0.99}')  # an unsigned file claims better
    out = world["root"] / "bom.json"
    assert main(["bom", "-o", str(out), "--policy", str(policy)]) == 0
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    (model,) = [c for c in json.loads(text)["components"] if c["type"] == "machine-learning-model"]
    metrics = model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"accuracy": "0.95", "f1": "0.93"}
    f1 = next(m for m in metrics if m["type"] == "f1")
    assert f1["slice"] == "reviews" and f1["confidenceInterval"] == {
        "lowerBound": "0.91",
        "upperBound": "0.95",
    }


def test_a_certificate_signed_attestation_verifies_against_the_pinned_chain(world: dict[str, Path]) -> None:
    from tests.helpers.signing import make_chain

    chain = make_chain(world["root"] / "pki", leaf_cn="acme evaluation pipeline")
    other = make_chain(world["root"] / "other-pki", leaf_cn="acme evaluation pipeline")
    assert (
        main(
            [
                "attest",
                str(world["model"]),
                "--metrics",
                str(world["root"] / "metrics.json"),
                "--key",
                str(chain.leaf_key),
                "--certificate-chain",
                str(chain.leaf),
                str(chain.intermediate),
            ]
        )
        == 0
    )
    files = {
        p.name: _sha(p.read_bytes()) for p in world["model"].iterdir() if p.name != "evaluation.intoto.jsonl"
    }

    def policy(root: Path) -> Path:
        return write_policy(
            world["root"] / "cert.toml",
            store=world["root"] / f"store-{root.parent.name}",
            registries={"local": {"kind": "directory", "path": str(world["root"] / "registry")}},
            signers={
                "eval-pipeline": {
                    "kind": "certificate",
                    "chain": [str(root)],
                    "leaf_subject": chain.leaf_subject,
                }
            },
            models={
                "acme/clf": {
                    "registry": "local",
                    "repo": "acme/clf",
                    "files": files,
                    "require_evaluation": {"signer": "eval-pipeline", "metrics": {"f1": ">= 0.9"}},
                }
            },
        )

    fetched = fetch_model("acme/clf", policy=load_policy(policy(chain.root)), progress=False)
    assert fetched.evaluation is not None and fetched.evaluation.identity == chain.leaf_subject
    with pytest.raises(SignatureError, match="does not chain to the CA pinned"):
        fetch_model("acme/clf", policy=load_policy(policy(other.root)), progress=False)


# --- issue 19, finding 3: what an evaluation must cover, and on which dataset -----------------------


def _with_dataset(world: dict[str, Path], text: str = "text,label\ngood,1\nbad,0\n") -> dict[str, str]:
    data = world["root"] / "registry" / "datasets" / "acme" / "reviews"
    data.mkdir(parents=True, exist_ok=True)
    (data / "test.csv").write_text(text)
    return {"test.csv": _sha((data / "test.csv").read_bytes())}


def _gated_policy(
    world: dict[str, Path], requirement: dict[str, object] | None = None, *, name: str = "trust.toml"
) -> Path:
    """The entry of the finding: every served file pinned, datasets = ["reviews"] (a pinned
    [datasets] entry), and an evaluation required from the pipeline's key."""
    model = world["model"]
    files = {
        p.relative_to(model).as_posix(): _sha(p.read_bytes())
        for p in sorted(model.rglob("*"))
        if p.is_file() and p.name != "evaluation.intoto.jsonl"
    }
    data = world["root"] / "registry" / "datasets" / "acme" / "reviews" / "test.csv"
    return write_policy(
        world["root"] / name,
        store=world["root"] / "store",
        registries={"local": {"kind": "directory", "path": str(world["root"] / "registry")}},
        signers={"eval-pipeline": {"kind": "key", "public_key": str(world["eval_pub"])}},
        datasets={
            "reviews": {
                "registry": "local",
                "repo": "acme/reviews",
                "files": {"test.csv": _sha(data.read_bytes())},
            }
        },
        models={
            "acme/clf": {
                "registry": "local",
                "repo": "acme/clf",
                "files": files,
                "datasets": ["reviews"],
                "require_evaluation": requirement
                or {"signer": "eval-pipeline", "metrics": {"accuracy": ">= 0.9"}},
            }
        },
    )


def _attest_on(world: dict[str, Path], dataset: str, *, policy: Path | None = None) -> None:
    argv = ["attest", str(world["model"]), "--metrics", str(world["root"] / "metrics.json")]
    argv += ["--key", str(world["eval_key"]), "--dataset", dataset]
    if policy is not None:
        argv += ["--policy", str(policy)]
    assert main(argv) == 0


def _gate(
    world: dict[str, Path], policy: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["verify", "--gate", "acme/clf", "--policy", str(policy), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_gate_fails_files_added_after_the_evaluation(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproduction: attested, then two config files added and pinned; the gate passed and the
    store served them. Every served file must be a subject of the attestation."""
    _with_dataset(world)
    _attest_on(world, "reviews", policy=_gated_policy(world))
    (world["model"] / "generation_config.json").write_text('{"max_length": 20}')
    (world["model"] / "tokenizer_config.json").write_text('{"model_max_length": 512}')
    policy = _gated_policy(world)
    code, verdict = _gate(world, policy, capsys)
    assert code == 1 and verdict["verdict"] == "fail"
    detail = verdict["checks"][0]["detail"]
    assert "does not cover generation_config.json, tokenizer_config.json" in detail
    uncovered = r"does not cover generation_config\.json, tokenizer_config\.json"
    with pytest.raises(IntegrityError, match=uncovered):
        fetch_model("acme/clf", policy=load_policy(policy), progress=False)
    _nothing_published(world)


def test_the_gate_fails_an_evaluation_on_another_dataset(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _with_dataset(world)
    _attest_on(world, "train-split-easy")
    policy = _gated_policy(world)
    code, verdict = _gate(world, policy, capsys)
    assert code == 1 and verdict["verdict"] == "fail"
    assert "measured on 'train-split-easy'" in verdict["checks"][0]["detail"]
    assert {c["check"]: c["ok"] for c in verdict["checks"]}["evaluation"] is False
    with pytest.raises(
        EvaluationError, match=r"measured on 'train-split-easy'.*accepts an evaluation on reviews"
    ):
        fetch_model("acme/clf", policy=load_policy(policy), progress=False)
    _nothing_published(world)


def test_the_evaluated_dataset_is_compared_by_its_pins(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _with_dataset(world)
    _attest_on(world, "reviews")  # no policy at hand: the attestation names the dataset but not its pins
    with pytest.raises(EvaluationError, match="names dataset pins none"):
        fetch_model("acme/clf", policy=load_policy(_gated_policy(world)), progress=False)
    (world["model"] / "evaluation.intoto.jsonl").unlink()
    _attest_on(world, "reviews", policy=_gated_policy(world))
    _with_dataset(world, "text,label\ngood,1\n")  # the dataset is re-pinned to another version
    with pytest.raises(EvaluationError, match="measured on another version of the dataset"):
        fetch_model("acme/clf", policy=load_policy(_gated_policy(world)), progress=False)
    _nothing_published(world)


def test_a_passing_gate_reports_the_dataset_evaluated_on(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _with_dataset(world)
    _attest_on(world, "reviews", policy=_gated_policy(world))
    requirement = {"signer": "eval-pipeline", "metrics": {"accuracy": ">= 0.9"}, "dataset": "reviews"}
    code, verdict = _gate(world, _gated_policy(world, requirement), capsys)
    assert code == 0 and verdict["verdict"] == "pass"
    datasets = next(c for c in verdict["checks"] if c["check"] == "datasets")
    assert datasets["ok"] and datasets["detail"]["evaluated_on"] == "reviews"


def test_a_required_dataset_must_be_one_of_the_entry_s(world: dict[str, Path]) -> None:
    _with_dataset(world)
    requirement = {"signer": "eval-pipeline", "metrics": {"accuracy": ">= 0.9"}, "dataset": "imdb"}
    with pytest.raises(PolicyError, match=r"require_evaluation\.dataset: names 'imdb'.*not among"):
        load_policy(_gated_policy(world, requirement))


@pytest.mark.parametrize("suffix", [".onnx_data", ".npy", ".joblib", ".pickle", ".tflite"])
def test_every_weight_suffix_is_a_weight_file(suffix: str) -> None:
    assert is_weight_file(f"sub/model{suffix}") and is_weight_file(f"MODEL{suffix.upper()}")


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_attest_refuses_a_symlink(
    world: dict[str, Path], kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = world["root"] / "outside"
    outside.mkdir()
    (outside / "vocab.txt").write_text("a\nb\n")
    if kind == "file":
        (world["model"] / "vocab.txt").symlink_to(outside / "vocab.txt")
    else:
        (world["model"] / "tokenizer").symlink_to(outside, target_is_directory=True)
    capsys.readouterr()
    argv = ["attest", str(world["model"]), "--metrics", str(world["root"] / "metrics.json")]
    assert main([*argv, "--key", str(world["eval_key"])]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and ("vocab.txt" in err if kind == "file" else "tokenizer" in err)
    assert not (world["model"] / "evaluation.intoto.jsonl").exists()


def test_the_bom_names_the_dataset_each_metric_was_measured_on(world: dict[str, Path]) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    _with_dataset(world)
    _attest_on(world, "reviews", policy=_gated_policy(world))
    policy = _gated_policy(world)
    out = world["root"] / "bom.json"
    assert main(["bom", "-o", str(out), "--policy", str(policy)]) == 0
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    (data,) = [c for c in doc["components"] if c["type"] == "data"]
    (model,) = [c for c in doc["components"] if c["type"] == "machine-learning-model"]
    metrics = model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]
    assert metrics and all(m["slice"] == data["bom-ref"] for m in metrics)
    props = {p["name"]: p["value"] for p in model["modelCard"]["properties"]}
    assert props["safeload:evaluation:dataset"] == "reviews"
    assert props["safeload:evaluation:dataset_digest"].startswith("sha256:")
