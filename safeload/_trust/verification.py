"""The verification core: every trust rule a model's stored files must meet, in one place.

The loader (:func:`safeload._trust.resolve.fetch_model`, after it has hashed a cold fetch into the store),
``safeload verify`` and ``safeload verify --gate`` all hand this module the same three things and get
the same verdict:

- the policy (its entry for the model, its signers, its ``[datasets]``), a value;
- the files the model's folder serves, ``relative path -> "sha256:<hex>"``, as the store hashed them;
- the signature bundle and the evaluation attestation, as bytes (``None`` when there are none).

Nothing here reads the store, the network or the model's files: the callers do their own I/O (fetching,
re-hashing blobs, checking the folder's shape) and pass the results in. The only I/O below is what a
signer's own settings name (its public key, certificate chain or trusted root), read while verifying.

The rules, checked in this order, each raising a typed error:

1. ``pins`` (:class:`~safeload.errors.IntegrityError`): every file the entry pins is served with its
   pinned digest, and a pinned entry serves nothing it does not pin.
2. ``signature`` (:class:`~safeload.errors.SignatureError`), when the entry names a signer: the bundle
   verifies against that signer and covers every served file with the same digest; every signed file is
   served, except signed files a pinned entry deliberately leaves out (the *optional* set: the signature
   vouches for more than the policy asks for).
3. ``evaluation`` (:class:`~safeload.errors.EvaluationError`, or ``IntegrityError``/``SignatureError``
   for the attestation's own defects), when the entry has ``require_evaluation``: see
   :func:`safeload._trust.attestation.check_evaluation`; the datasets it accepts come from
   :func:`accepted_datasets`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from safeload.errors import EvaluationError, IntegrityError, SafeloadError, SignatureError

if TYPE_CHECKING:
    from safeload._trust.attestation import Evaluation
    from safeload._trust.signers import VerifiedSignature
    from safeload.policy import ModelEntry, Policy

__all__ = [
    "CHECKS",
    "RULES_VERSION",
    "Evidence",
    "Finding",
    "Report",
    "Verified",
    "accepted_datasets",
    "assess",
    "check_evaluation",
    "check_pins",
    "check_signature",
    "optional_signed",
    "verify_model",
]

CHECKS = ("pins", "signature", "evaluation")
# Part of what a store record's evaluation was verified under: raised when a rule changes, so records
# verified under the old rules are verified again (2: every served file covered; datasets compared).
RULES_VERSION = 2
_T = TypeVar("_T")


@dataclass(frozen=True)
class Evidence:
    """What the store (or a cold fetch) holds for one entry: the served files' digests, and the
    signature and attestation bytes. ``attestation_absent`` says why there is no attestation, for the
    error (``"the store holds none"``, or why the registry could not deliver it)."""

    digests: Mapping[str, str]
    signature: bytes | None = None
    attestation: bytes | None = None
    attestation_absent: str = "the store holds none"


@dataclass(frozen=True)
class Verified:
    """A model that passed every rule: the signature and evaluation that held (``None`` when the entry
    requires none)."""

    signature: VerifiedSignature | None
    evaluation: Evaluation | None


@dataclass(frozen=True)
class Finding:
    check: str  # one of CHECKS
    error: SafeloadError


@dataclass(frozen=True)
class Report:
    """Every rule's outcome, for ``safeload verify`` to render; ``findings`` in :data:`CHECKS` order."""

    signature: VerifiedSignature | None
    evaluation: Evaluation | None
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def failed(self, check: str) -> bool:
        return any(f.check == check for f in self.findings)


def check_pins(entry: ModelEntry, digests: Mapping[str, str], *, where: str) -> None:
    """Every pinned file is served with its pin; a pinned entry serves only pinned files.

    Raises:
        IntegrityError: naming each file that differs, is missing, or is served unpinned.
    """
    differ = [(rel, pin) for rel, pin in sorted(entry.files.items()) if digests.get(rel) != pin.lower()]
    problems = [f"{rel}: pinned {pin}, store has {digests.get(rel) or 'nothing'}" for rel, pin in differ]
    if entry.files:
        problems += [
            f"{rel}: served but not pinned ({digest})"
            for rel, digest in sorted(digests.items())
            if rel not in entry.files
        ]
    if problems:
        # One pinned file to blame: its path and both digests go with the error as well.
        rel, pin = differ[0] if len(problems) == 1 and differ else (None, None)
        raise IntegrityError(
            f"{where}: the files do not match the policy's pins: " + "; ".join(problems),
            path=rel, expected=pin, actual=digests.get(rel) if rel is not None else None,
        )


def optional_signed(entry: ModelEntry, signed: Mapping[str, str]) -> frozenset[str]:
    """The signed files a model may leave out: those a pinned entry does not pin. An entry without pins
    serves exactly the signed files, so nothing is optional."""
    if not entry.files:
        return frozenset()
    return frozenset(signed) - frozenset(entry.files)


def check_signature(
    entry: ModelEntry, policy: Policy, digests: Mapping[str, str], signature: bytes | None, *, where: str
) -> VerifiedSignature | None:
    """The entry's signer vouches for exactly the served files (None when the entry names no signer).

    Raises:
        SignatureError: there is no signature, it does not verify against the signer, or its coverage
            differs from the served files (see :func:`optional_signed`).
    """
    if entry.signer is None:
        return None
    from safeload._trust.signing import check_signed_files, verify_signature_bytes

    signer = policy.signers[entry.signer]
    if signature is None:
        raise SignatureError(f"{where}: the policy names signer {signer.name!r} but there is no signature")
    verified = verify_signature_bytes(
        signer, signature, what=f"{where}: the signature {entry.signature_path}"
    )
    check_signed_files(
        signer.name,
        verified.digests,
        digests,
        optional=optional_signed(entry, verified.digests),
        exempt={entry.signature_path},
    )
    for rel, pin in entry.files.items():
        signed = verified.digests.get(rel)
        if signed is not None and signed != pin.lower():
            raise SignatureError(f"{where}: the signature says {rel} = {signed} but the policy pins {pin}")
    return verified


def accepted_datasets(entry: ModelEntry, policy: Policy) -> Mapping[str, str | None] | None:
    """The datasets an evaluation of ``entry`` may be measured on, each with the pin-set digest the
    attestation must name (None when that ``[datasets]`` entry pins no files); None when the entry names
    no dataset (then the evaluation's dataset is reported, not checked)."""
    from safeload._trust.attestation import dataset_digest

    req = entry.require_evaluation
    names = (req.dataset,) if req is not None and req.dataset is not None else entry.datasets
    if not names:
        return None
    out: dict[str, str | None] = {}
    for name in names:
        data = policy.datasets.get(name)
        out[name] = dataset_digest(data.files) if data is not None and data.files else None
    return out


def check_evaluation(
    entry: ModelEntry,
    policy: Policy,
    digests: Mapping[str, str],
    attestation: bytes | None,
    *,
    where: str,
    absent: str = "the store holds none",
) -> Evaluation | None:
    """The entry's required evaluation holds over exactly the served files (None when none is required).

    Raises:
        EvaluationError: there is no attestation, its dataset is not one the entry accepts, or a
            required metric is missing or fails.
        IntegrityError: the attestation is over other digests or leaves a served file uncovered.
        SignatureError: the attestation is not signed by the requirement's signer, or is malformed.
    """
    req = entry.require_evaluation
    if req is None:
        return None
    if attestation is None:
        raise EvaluationError(
            f"{where}: the entry requires an evaluation attested by {req.signer!r}, but {absent}; publish "
            "the attestation (safeload attest) beside the model"
        )
    from safeload._trust.attestation import check_evaluation as check_attestation

    return check_attestation(
        policy.signers[req.signer],
        attestation,
        digests,
        req.metrics,
        where=where,
        datasets=accepted_datasets(entry, policy),
    )


def verify_model(entry: ModelEntry, policy: Policy, evidence: Evidence, *, where: str) -> Verified:
    """Every rule, in :data:`CHECKS` order; the first that fails raises.

    Raises:
        IntegrityError, SignatureError, EvaluationError: as the check that failed.
    """
    check_pins(entry, evidence.digests, where=where)
    signature = check_signature(entry, policy, evidence.digests, evidence.signature, where=where)
    evaluation = check_evaluation(
        entry, policy, evidence.digests, evidence.attestation, where=where, absent=evidence.attestation_absent
    )
    return Verified(signature=signature, evaluation=evaluation)


def assess(entry: ModelEntry, policy: Policy, evidence: Evidence, *, where: str) -> Report:
    """Every rule, each run even when an earlier one failed: what ``safeload verify`` reports. Its first
    finding is what :func:`verify_model` raises for the same inputs."""
    findings: list[Finding] = []

    def attempt(check: str, step: Callable[[], _T]) -> _T | None:
        try:
            return step()
        except SafeloadError as exc:
            findings.append(Finding(check, exc))
            return None

    attempt("pins", lambda: check_pins(entry, evidence.digests, where=where))
    signature = attempt(
        "signature", lambda: check_signature(entry, policy, evidence.digests, evidence.signature, where=where)
    )
    evaluation = attempt(
        "evaluation",
        lambda: check_evaluation(
            entry, policy, evidence.digests, evidence.attestation, where=where,
            absent=evidence.attestation_absent,
        ),
    )  # fmt: skip
    return Report(signature=signature, evaluation=evaluation, findings=tuple(findings))
