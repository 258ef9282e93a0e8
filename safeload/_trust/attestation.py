"""Evaluation attestations: signed evaluation results bound to the exact bytes of a model.

An attestation is an in-toto Statement v1 in a DSSE envelope inside a Sigstore bundle, the envelope
model-signing uses, so the same signer kinds verify it (``key``, ``certificate``, ``sigstore``
offline). Its subjects are the model's files, each with its sha256; its predicate
(``https://safeload.dev/evaluation/v1``) carries the results::

    {"metrics": [{"name": "f1", "value": 0.93, "confidence_interval": [0.91, 0.95]}],
     "dataset": "reviews", "evaluator": {"revision": "<the evaluation code's commit>"}}

A model entry that sets ``require_evaluation`` loads only when an attestation from that signer holds:
every file the model's folder serves (weights, configs, tokenizer files, code: whatever a loader may
read) is a subject with the same digest (an attestation over other bytes is the swapped-artifact case;
a file added after the evaluation is one nobody evaluated), no subject names a file of the model with
another digest, the dataset it names is one the entry accepts (one of the entry's ``datasets``, or the
requirement's own ``dataset``), with the ``[datasets]`` entry's pin-set digest when that entry pins
files, and each required metric holds. An attestation file holds one bundle per line (``*.intoto.jsonl``); the
first that verifies is used. ``safeload attest`` writes one, signed with an ECDSA key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from safeload._trust.signers import Signer
from safeload.errors import EvaluationError, IntegrityError, SignatureError

__all__ = [
    "PREDICATE_TYPE",
    "Evaluation",
    "Metric",
    "check_evaluation",
    "check_threshold",
    "dataset_digest",
    "is_weight_file",
    "parse_threshold",
    "sign_statement",
    "statement",
    "verify_evaluation",
]

PREDICATE_TYPE = "https://safeload.dev/evaluation/v1"
_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_MAX_ATTESTATION_BYTES = 16 << 20
_MAX_LINES = 64
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".onnx",
    ".h5",
    ".msgpack",
    ".npz",
    ".npy",
    ".pkl",
    ".pickle",
    ".joblib",
    ".onnx_data",
    ".tflite",
)
_THRESHOLD = re.compile(r"^\s*(>=|<=|==|>|<)\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE]-?[0-9]+)?)\s*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    confidence_interval: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "value": self.value}
        if self.confidence_interval is not None:
            out["confidence_interval"] = list(self.confidence_interval)
        return out


@dataclass(frozen=True)
class Evaluation:
    """A verified attestation: who signed it, over which files, and what it reports."""

    signer: str
    identity: str
    subjects: Mapping[str, str]  # relative path -> "sha256:<hex>"
    metrics: tuple[Metric, ...]
    dataset: str | None = None
    evaluator_revision: str | None = None
    dataset_digest: str | None = None  # the pin-set digest of the [datasets] entry it was measured on

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], subjects: Mapping[str, str]) -> Evaluation:
        """Rebuild what :meth:`to_json` recorded when the attestation was verified."""
        return cls(
            signer=str(data["signer"]),
            identity=str(data["identity"]),
            subjects=MappingProxyType(dict(subjects)),
            metrics=tuple(
                Metric(
                    name=str(m["name"]),
                    value=float(m["value"]),
                    confidence_interval=(
                        float(m["confidence_interval"][0]),
                        float(m["confidence_interval"][1]),
                    )
                    if m.get("confidence_interval")
                    else None,
                )
                for m in data.get("metrics", [])
            ),
            dataset=data.get("dataset"),
            evaluator_revision=data.get("evaluator_revision"),
            dataset_digest=data.get("dataset_digest"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "signer": self.signer,
            "identity": self.identity,
            "dataset": self.dataset,
            "dataset_digest": self.dataset_digest,
            "evaluator_revision": self.evaluator_revision,
            "metrics": [m.to_json() for m in self.metrics],
        }


def is_weight_file(rel: str) -> bool:
    """Whether a loader reads tensors from this file (an evaluation covers these and every other file)."""
    return rel.rsplit("/", 1)[-1].lower().endswith(_WEIGHT_SUFFIXES)


def parse_threshold(text: str) -> tuple[str, float]:
    """``">= 0.92"`` -> ``(">=", 0.92)``.

    Raises:
        ValueError: not ``OP NUMBER`` with OP one of ``>= <= == > <`` (the policy parser reports it).
    """
    m = _THRESHOLD.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"must be a comparison such as '>= 0.92' (>=, <=, ==, > or <), got {text!r}")
    return m.group(1), float(m.group(2))


def check_threshold(value: float, op: str, limit: float) -> bool:
    return {
        ">=": value >= limit,
        "<=": value <= limit,
        "==": value == limit,
        ">": value > limit,
        "<": value < limit,
    }[op]


def statement(
    files: Mapping[str, str],
    metrics: Sequence[Metric],
    *,
    dataset: str | None = None,
    evaluator_revision: str | None = None,
    dataset_pins: str | None = None,
) -> bytes:
    """The in-toto statement (JSON bytes) of an evaluation of ``files`` (path -> ``"sha256:<hex>"``);
    ``dataset_pins`` is :func:`dataset_digest` of the ``[datasets]`` entry ``dataset`` names."""
    predicate: dict[str, Any] = {"metrics": [m.to_json() for m in metrics]}
    if dataset is not None:
        predicate["dataset"] = dataset
    if dataset_pins is not None:
        predicate["dataset_digest"] = dataset_pins
    if evaluator_revision is not None:
        predicate["evaluator"] = {"revision": evaluator_revision}
    doc = {
        "_type": _STATEMENT_TYPE,
        "subject": [
            {"name": rel, "digest": {"sha256": digest.removeprefix("sha256:")}}
            for rel, digest in sorted(files.items())
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign_statement(payload: bytes, private_key_pem: bytes, certificates: Sequence[bytes] = ()) -> bytes:
    """A Sigstore bundle (one JSON line) holding ``payload`` in a DSSE envelope signed with an ECDSA key,
    the form model-signing writes for ``kind = "key"`` signers; with ``certificates`` (PEM, the signing
    certificate first, then its intermediates) the bundle carries that chain, as model-signing's
    certificate method writes it, for ``kind = "certificate"`` signers.

    Raises:
        SignatureError: the key is not an ECDSA P-256/P-384/P-521 private key in PEM, a certificate is
            not PEM, or the first certificate is not the key's.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from safeload._trust.signing import dsse_signature

    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"the signing key is not a PEM private key without a password ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SignatureError("the signing key must be an ECDSA P-256, P-384 or P-521 private key")
    signature = dsse_signature(_PAYLOAD_TYPE, payload, key)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    material: dict[str, Any] = {"publicKey": {"hint": hashlib.sha256(pem).hexdigest()}}
    if certificates:
        try:
            chain = [x509.load_pem_x509_certificate(c) for c in certificates]
        except ValueError as exc:
            raise SignatureError(f"a certificate of the chain is not PEM ({exc})") from exc
        if chain[0].public_key() != key.public_key():
            raise SignatureError("the first certificate of the chain is not the signing key's certificate")
        material = {
            "x509CertificateChain": {
                "certificates": [
                    {"rawBytes": base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()}
                    for c in chain
                ]
            }
        }
    bundle = {
        "mediaType": _BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": _PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode()}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode() + b"\n"


def _parse_statement(payload_type: str, payload: bytes, where: str) -> tuple[dict[str, str], dict[str, Any]]:
    from safeload._trust.signing import in_toto_statement

    def refuse(reason: str) -> SignatureError:
        return SignatureError(f"{where}: the attestation is unusable: {reason}")

    doc = in_toto_statement(payload_type, payload, refuse)
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise refuse(f"predicate type {doc.get('predicateType')!r}, expected {PREDICATE_TYPE!r}")
    subjects: dict[str, str] = {}
    raw_subjects = doc.get("subject")
    if not isinstance(raw_subjects, list) or not raw_subjects:
        raise refuse("no subjects")
    for item in raw_subjects:
        name = item.get("name") if isinstance(item, dict) else None
        digest = item.get("digest", {}).get("sha256") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.match(digest):
            raise refuse(f"subject {item!r} lacks a name or a 64-hex sha256")
        if name in subjects:
            raise refuse(f"subject {name!r} is listed twice")
        subjects[name] = "sha256:" + digest
    predicate = doc.get("predicate")
    if not isinstance(predicate, dict):
        raise refuse("no predicate")
    return subjects, predicate


def _metrics(predicate: Mapping[str, Any], where: str) -> tuple[Metric, ...]:
    raw = predicate.get("metrics")
    if not isinstance(raw, list):
        raise SignatureError(f"{where}: the attestation's predicate has no metrics list")
    out: list[Metric] = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SignatureError(f"{where}: metric {item!r} needs a name and a number")
        if not math.isfinite(value):
            raise SignatureError(f"{where}: metric {name!r} is {value!r}, not a finite number")
        ci_raw = item.get("confidence_interval")
        ci: tuple[float, float] | None = None
        if ci_raw is not None:
            if (
                not isinstance(ci_raw, list)
                or len(ci_raw) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in ci_raw)
            ):
                raise SignatureError(f"{where}: metric {name!r} has a malformed confidence interval")
            ci = (float(ci_raw[0]), float(ci_raw[1]))
        out.append(Metric(name=name, value=float(value), confidence_interval=ci))
    return tuple(out)


def dataset_digest(files: Mapping[str, str]) -> str:
    """The digest that names a pinned dataset: sha256 over its sorted ``path NUL digest LF`` pins (what
    an attestation records as ``dataset_digest`` and ``require_evaluation`` compares)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel].lower()}\n".encode())
    return "sha256:" + h.hexdigest()


def _check_dataset(
    evaluation: Evaluation, datasets: Mapping[str, str | None] | None, where: str
) -> None:
    if datasets is None:
        return
    accepted = ", ".join(sorted(datasets))
    if evaluation.dataset is None:
        raise EvaluationError(
            f"{where}: the evaluation names no dataset; the policy accepts an evaluation on {accepted} "
            "only (attest with --dataset)"
        )
    if evaluation.dataset not in datasets:
        raise EvaluationError(
            f"{where}: the evaluation was measured on {evaluation.dataset!r}, but the policy accepts an "
            f"evaluation on {accepted} only; its metrics say nothing about the dataset the entry names"
        )
    pinned = datasets[evaluation.dataset]
    if pinned is not None and evaluation.dataset_digest != pinned:
        raise EvaluationError(
            f"{where}: the evaluation on {evaluation.dataset!r} names dataset pins "
            f"{evaluation.dataset_digest or 'none'}, but the policy's [datasets.{evaluation.dataset}] pins "
            f"{pinned}: it was measured on another version of the dataset (attest with --policy naming "
            "the pinned dataset)"
        )


def _check_one(
    signer: Signer,
    raw: bytes,
    files: Mapping[str, str],
    thresholds: Mapping[str, tuple[str, float]],
    datasets: Mapping[str, str | None] | None,
    where: str,
) -> Evaluation:
    from safeload._trust.signing import verify_envelope

    payload_type, payload, identity = verify_envelope(signer, raw, what=f"{where}: the attestation")
    subjects, predicate = _parse_statement(payload_type, payload, where)
    for rel, digest in sorted(subjects.items()):
        have = files.get(rel)
        if have is not None and have != digest:
            raise IntegrityError(
                f"{where}: the evaluation attests {rel} = {digest}, but the bytes being loaded are {have}: "
                "it evaluated another artifact than the one deployed"
            )
    uncovered = sorted(rel for rel in files if rel not in subjects)
    if uncovered:
        raise IntegrityError(
            f"{where}: the evaluation does not cover {', '.join(uncovered)}; files nobody evaluated "
            "will not be loaded (attest the model as it is deployed, every file it serves)"
        )
    dataset, evaluator = predicate.get("dataset"), predicate.get("evaluator")
    pins = predicate.get("dataset_digest")
    revision = evaluator.get("revision") if isinstance(evaluator, dict) else None
    evaluation = Evaluation(
        signer=signer.name,
        identity=identity,
        subjects=MappingProxyType(subjects),
        metrics=_metrics(predicate, where),
        dataset=dataset if isinstance(dataset, str) else None,
        evaluator_revision=revision if isinstance(revision, str) else None,
        dataset_digest=pins.lower() if isinstance(pins, str) else None,
    )
    _check_dataset(evaluation, datasets, where)
    for name, (op, limit) in sorted(thresholds.items()):
        metric = evaluation.metric(name)
        if metric is None:
            raise EvaluationError(
                f"{where}: the evaluation reports no {name!r}; the policy requires {name} {op} {limit:g}"
            )
        if not check_threshold(metric.value, op, limit):
            raise EvaluationError(
                f"{where}: {name} = {metric.value:g} fails the policy's requirement {name} {op} {limit:g}; "
                "the model does not pass its evaluation"
            )
    return evaluation


def verify_evaluation(
    signer: Signer,
    attestation: Path,
    files: Mapping[str, str],
    thresholds: Mapping[str, tuple[str, float]],
    *,
    where: str,
    datasets: Mapping[str, str | None] | None = None,
) -> Evaluation:
    """:func:`check_evaluation` over the attestation file at ``attestation`` (read up to 16 MiB).

    Raises:
        EvaluationError: the file cannot be read; else as :func:`check_evaluation`.
    """
    try:
        with open(attestation, "rb") as fh:
            data = fh.read(_MAX_ATTESTATION_BYTES + 1)
    except OSError as exc:
        raise EvaluationError(f"{where}: cannot read the attestation {attestation}: {exc.strerror}") from exc
    return check_evaluation(signer, data, files, thresholds, where=where, datasets=datasets)


def check_evaluation(
    signer: Signer,
    data: bytes,
    files: Mapping[str, str],
    thresholds: Mapping[str, tuple[str, float]],
    *,
    where: str,
    datasets: Mapping[str, str | None] | None = None,
) -> Evaluation:
    """The first attestation in ``data`` (one Sigstore bundle per line) that ``signer`` signed, that
    covers ``files`` (every file the model serves, with the same digests), that was measured on one of
    ``datasets`` (name -> its :func:`dataset_digest`, or None when that dataset pins no files; None:
    any dataset) and whose metrics meet ``thresholds``.

    Raises:
        SignatureError: no line verifies as a bundle from ``signer``, or its statement is malformed.
        IntegrityError: the attestation is over other digests, or leaves a file uncovered.
        EvaluationError: the dataset is not one the policy accepts, or a required metric is missing or
            fails its threshold.
    """
    if len(data) > _MAX_ATTESTATION_BYTES:
        raise SignatureError(f"{where}: the attestation is over {_MAX_ATTESTATION_BYTES} bytes")
    lines = [line for line in data.splitlines() if line.strip()][:_MAX_LINES]
    if not lines:
        raise SignatureError(f"{where}: the attestation file is empty")
    failures: list[Exception] = []
    for line in lines:
        try:
            return _check_one(signer, line, files, thresholds, datasets, where)
        except (SignatureError, IntegrityError, EvaluationError) as exc:
            failures.append(exc)
    # Report what went furthest: a failing metric or other digests say more than a foreign signature.
    for kind in (EvaluationError, IntegrityError, SignatureError):
        for failure in failures:
            if isinstance(failure, kind):
                raise failure
    raise failures[0]
