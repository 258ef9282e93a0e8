"""``safeload verify``: re-hash the store against the policy's pins and re-check signatures."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_ERROR, EXIT_FINDING, EXIT_OK, UI
from safeload.errors import IntegrityError, UntrustedSourceError

if TYPE_CHECKING:
    from safeload._trust.store import Store
    from safeload.policy import ModelEntry, Policy

__all__ = ["add_parser", "run"]

_MAX_EVIDENCE_BYTES = 16 << 20  # the verification core refuses a signature or attestation past this

_DESCRIPTION = """\
Re-hash what the store holds for each pinned model and compare it with the policy: every pinned file must
be present with its pinned sha256, the folder must hold exactly the verified files, each linked to an
intact blob, and a model with a signer must still carry a valid signature from that signer over the same
digests (signed files a pinned entry leaves out may be absent); a model with require_evaluation must
carry an evaluation attestation from its signer over every file it serves, measured on a dataset the
entry accepts, whose metrics hold. The loader and this command call one verification core, so a model
loads exactly when verify finds it intact; --json names, per model, the error a load would raise.
Without NAME, checks every [models] and [datasets] entry that has been fetched and re-hashes every blob
in the store. Nothing is repaired here: a failing model is reported, and `safeload prefetch --refetch
NAME` drops its folder and every blob of it that fails its hash, then fetches it again.

--gate NAME is a promotion gate: it fetches NAME if needed, and exits 0 only when the stored bytes match
the pins, the signature verifies, every required evaluation holds and every dataset the model names is
a pinned [datasets] entry. --json then prints a single verdict record for a CI system to archive, and
each decision is a line in the audit log."""

_EPILOG = """\
examples:
  safeload verify
  safeload verify acme/sentiment --json
  safeload verify --gate acme/sentiment --json > verdict.json

exit codes: 0 everything intact, 1 tampering found (or a named model is not in the store / not in the
policy), 2 error."""


@dataclass
class _Result:
    name: str
    kind: str = "model"  # model | dataset
    status: str = "ok"  # ok | tampered | absent
    files: int = 0
    signature: str = "none"  # none | verified | invalid
    evaluation: str = "none"  # none | verified | failed
    metrics: dict[str, float] = field(default_factory=dict)
    revision: str | None = None
    digests: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # The error the loader raises for the same store state (the first rule that fails), or None.
    error: str | None = None
    dataset: str | None = None  # the dataset the verified evaluation was measured on


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "verify",
        help="re-hash the store against the policy and signatures",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument(
        "names", metavar="NAME", nargs="*", help="names from [models] or [datasets] (default: all)"
    )
    parser.add_argument("--gate", metavar="NAME", help="the promotion gate for one model: a single verdict")
    add_policy(parser)
    parser.set_defaults(run=run)


def _mlmodel_check(policy: Policy, name: str, entry: ModelEntry, *, fetched: bool) -> dict[str, Any]:
    """The gate's ``mlmodel`` check of an MLflow entry: MLmodel asks for no code and names its flavor."""
    from safeload.errors import SafeloadError
    from safeload.mlflow import fetch as fetch_mlflow

    if not fetched:
        return {"check": "mlmodel", "ok": False, "detail": "not checked: the model was not fetched"}
    try:
        got = fetch_mlflow(name, entry.flavor or "", policy=policy)
    except SafeloadError as exc:
        return {"check": "mlmodel", "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return {
        "check": "mlmodel", "ok": True,
        "detail": f"MLmodel loads as flavor {got.mlmodel.flavor!r} without running the model's code",
    }  # fmt: skip


def _gate(policy: Policy, name: str, ui: UI) -> int:
    """Fetch (if needed) and verify one model, and emit one verdict record."""
    from datetime import datetime, timezone

    from safeload._trust import audit
    from safeload._trust.resolve import fetch_model
    from safeload._trust.store import Store
    from safeload.errors import SafeloadError

    entry = policy.models.get(name)
    if entry is None:
        raise UntrustedSourceError(f"--gate {name}: not in the policy's [models]; pin it first")
    checks: list[dict[str, Any]] = []
    try:
        fetch_model(name, policy=policy)
        checks.append({"check": "fetch", "ok": True, "detail": "fetched and verified through the policy"})
    except SafeloadError as exc:
        checks.append({"check": "fetch", "ok": False, "detail": f"{type(exc).__name__}: {exc}"})
    from safeload.policy import MlflowRegistrySpec

    if isinstance(policy.registries.get(entry.registry), MlflowRegistrySpec):
        # An MLflow model passes only if it loads as a load would load it: MLmodel's checks included.
        checks.append(_mlmodel_check(policy, name, entry, fetched=checks[0]["ok"]))
    result = _verify_model(Store(policy.store), policy, entry)
    checks.append(
        {
            "check": "pins",
            "ok": result.status == "ok",
            "detail": "; ".join(result.problems) or f"{result.files} files match their pins",
        }
    )
    checks.append(
        {
            "check": "signature",
            "ok": entry.signer is None or result.signature == "verified",
            "detail": result.signature if entry.signer else "no signer required",
        }
    )
    checks.append(
        {
            "check": "evaluation",
            "ok": entry.require_evaluation is None or result.evaluation == "verified",
            "detail": result.metrics if entry.require_evaluation else "no evaluation required",
        }
    )
    unpinned = [d for d in entry.datasets if d not in policy.datasets]
    datasets_detail: dict[str, Any] = {
        "pinned": [d for d in entry.datasets if d in policy.datasets],
        "unpinned": unpinned,
    }
    if entry.require_evaluation is not None:
        # The verification core admitted this dataset (one of the entry's, with their pins), or failed
        # the evaluation check above.
        datasets_detail["evaluated_on"] = result.dataset
    checks.append({"check": "datasets", "ok": not unpinned, "detail": datasets_detail})
    passed = all(c["ok"] for c in checks)
    verdict = {
        "gate": name,
        "verdict": "pass" if passed else "fail",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "policy": str(policy.source) if policy.source else None,
        "registry": entry.registry,
        "repo": entry.repo,
        "revision": entry.store_revision(),
        "files": result.digests,
        "signer": entry.signer,
        "metrics": result.metrics,
        "checks": checks,
    }
    failed = [c["check"] for c in checks if not c["ok"]]
    audit.record(
        policy,
        name=name,
        registry=entry.registry,
        repo=entry.repo,
        revision=result.revision,
        files=result.digests,
        decision="gate-pass" if passed else "gate-fail",
        reason="every check holds" if passed else f"failed: {', '.join(failed)}",
    )

    def render(out: Console) -> None:
        colour = "green" if passed else "bold red"
        out.print(f"gate {name}: [{colour}]{verdict['verdict']}[/]")
        for c in checks:
            mark = "ok  " if c["ok"] else "FAIL"
            out.print(f"  {mark} {c['check']}: {c['detail']}", markup=False)

    ui.emit(verdict, render)
    return EXIT_OK if passed else EXIT_FINDING


def _read(store: Store, digest: str | None, what: str, problems: list[str]) -> bytes | None:
    """A signature or attestation blob's bytes, re-hashed first; None (and a problem) when it changed."""
    if digest is None:
        return None
    try:
        store.rehash_blob(digest)
        with open(store.blob_path(digest), "rb") as fh:
            return fh.read(_MAX_EVIDENCE_BYTES + 1)
    except (IntegrityError, OSError) as exc:
        problems.append(f"{what}: {exc}")
        return None


def _verify_model(store: Store, policy: Policy, entry: ModelEntry) -> _Result:
    """Re-hash what the store holds for ``entry`` and hand it to the verification core, the same
    routine the loader calls: only the store's own integrity (blobs, the folder's shape) is checked here."""
    from safeload._trust.verification import Evidence, assess

    result = _Result(entry.name, kind=entry.kind)
    record = store.read_model(entry.registry, entry.store_repo, entry.store_revision())
    if record is None:
        result.status = "absent"
        result.problems.append("not in the store (run `safeload prefetch`)")
        return result
    digests = record.digests
    result.files = len(digests)
    result.revision = entry.store_revision()
    result.digests = dict(digests)
    store_problems: list[str] = []
    for rel, digest in sorted(digests.items()):
        try:
            store.rehash_blob(digest)
        except IntegrityError as exc:
            store_problems.append(f"{rel}: {exc}")
    if not store_problems:  # the folder's shape: exactly the verified files, each linked to its blob
        try:
            store.check_model(record)
        except IntegrityError as exc:
            store_problems.append(str(exc))
    signature = _read(store, record.signature_digest, "signature", store_problems)
    attestation = None
    if entry.require_evaluation is not None:
        attestation = _read(store, record.extra.evaluation_digest, "evaluation", store_problems)
    report = assess(
        entry,
        policy,
        Evidence(digests=digests, signature=signature, attestation=attestation),
        where=entry.name,
    )
    result.problems.extend(store_problems)
    if store_problems:
        result.error = "IntegrityError"  # what a warm load raises for a store that changed
    elif report.findings:
        result.error = type(report.findings[0].error).__name__
    for finding in report.findings:
        prefix = "" if finding.check == "pins" else f"{finding.check}: "
        result.problems.append(f"{prefix}{finding.error}")
    if entry.signer is not None:
        result.signature = "verified" if report.signature is not None else "invalid"
    if entry.require_evaluation is not None:
        if report.evaluation is not None:
            result.evaluation = "verified"
            result.metrics = {m.name: m.value for m in report.evaluation.metrics}
            result.dataset = report.evaluation.dataset
        else:
            result.evaluation = "failed"
    if result.problems:
        result.status = "tampered"
    return result


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._trust.store import Store

    policy = load_policy(args)
    if args.gate is not None:
        if args.names:
            ui.error("--gate checks one model: give it as --gate NAME, without other names")
            return EXIT_ERROR
        return _gate(policy, args.gate, ui)
    unknown = [n for n in args.names if n not in policy.models and n not in policy.datasets]
    if unknown:
        raise UntrustedSourceError(
            f"not in the policy's [models] or [datasets]: {', '.join(unknown)}; pin them first with "
            "`safeload pin`"
        )
    store = Store(policy.store)
    if args.names:
        entries = [policy.models.get(n) or policy.datasets[n] for n in args.names]
    else:
        entries = [
            *(policy.models[n] for n in sorted(policy.models)),
            *(policy.datasets[n] for n in sorted(policy.datasets)),
        ]
    results = [_verify_model(store, policy, entry) for entry in entries]
    if not args.names:
        results = [r for r in results if r.status != "absent"]
    blob_report = store.verify() if not args.names else None
    bad_blobs = list(blob_report.bad) if blob_report else []
    failed = bool(bad_blobs) or any(r.status != "ok" for r in results)
    data = {
        "store": str(policy.store),
        "ok": not failed,
        "models": [
            {
                "name": r.name,
                "kind": r.kind,
                "status": r.status,
                "files": r.files,
                "signature": r.signature,
                "evaluation": r.evaluation,
                "error": r.error,
                "problems": r.problems,
            }
            for r in results
        ],
        "blobs_checked": blob_report.checked if blob_report else None,
        "bad_blobs": bad_blobs,
    }

    def render(out: Console) -> None:
        table = Table(title=f"store {policy.store}", title_justify="left")
        for col in ("model", "status", "files", "signature", "evaluation"):
            table.add_column(col)
        colour = {"ok": "green", "tampered": "bold red", "absent": "yellow"}
        for r in results:
            label = f"{r.name} (dataset)" if r.kind == "dataset" else r.name
            table.add_row(
                label, f"[{colour[r.status]}]{r.status}[/]", str(r.files), r.signature, r.evaluation
            )
        out.print(table)
        for r in results:
            for problem in r.problems:
                out.print(f"{r.name}: {problem}", markup=False)
        if blob_report is not None:
            out.print(f"{blob_report.checked} blobs re-hashed, {len(bad_blobs)} bad", markup=False)
            for digest in bad_blobs:
                out.print(f"  modified blob: {digest}", markup=False)
        out.print(
            "intact" if not failed else "[bold red]tampering found[/]: repair each failing model with "
            "`safeload prefetch --refetch NAME`"
        )

    ui.emit(data, render)
    return EXIT_FINDING if failed else EXIT_OK
