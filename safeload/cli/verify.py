"""``safeload verify``: re-hash the store against the policy's pins and re-check signatures."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_FINDING, EXIT_OK, UI
from safeload.errors import IntegrityError, SignatureError, UntrustedSourceError

if TYPE_CHECKING:
    from safeload.policy import ModelEntry, Policy
    from safeload.store import Store

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Re-hash what the store holds for each pinned model and compare it with the policy: every pinned file must
be present with its pinned sha256, the folder must hold exactly the verified files, each linked to an
intact blob, and a model with a signer must still carry a valid signature from that signer over the same
digests. Without NAME, checks every [models] entry that has been fetched and re-hashes every blob in the
store. Nothing is repaired: a failing model is reported; remove it with `safeload gc` and fetch again."""

_EPILOG = """\
examples:
  safeload verify
  safeload verify acme/sentiment --json

exit codes: 0 everything intact, 1 tampering found (or a named model is not in the store / not in the
policy), 2 error."""


@dataclass
class _Result:
    name: str
    kind: str = "model"  # model | dataset
    status: str = "ok"  # ok | tampered | absent
    files: int = 0
    signature: str = "none"  # none | verified | invalid
    problems: list[str] = field(default_factory=list)


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
    add_policy(parser)
    parser.set_defaults(run=run)


def _verify_model(store: Store, policy: Policy, entry: ModelEntry) -> _Result:
    from safeload._signing import verify_model_signature

    result = _Result(entry.name, kind=entry.kind)
    record = store.read_model(entry.registry, entry.store_repo, entry.store_revision())
    if record is None:
        result.status = "absent"
        result.problems.append("not in the store (run `safeload prefetch`)")
        return result
    digests = record.digests
    result.files = len(digests)
    for rel, pinned in sorted(entry.files.items()):
        have = digests.get(rel)
        if have != pinned:
            result.problems.append(f"{rel}: pinned {pinned}, store has {have or 'nothing'}")
    rehashed_ok = True
    for rel, digest in sorted(digests.items()):
        try:
            store.rehash_blob(digest)
        except IntegrityError as exc:
            rehashed_ok = False
            result.problems.append(f"{rel}: {exc}")
    if rehashed_ok:  # the folder's shape: exactly the verified files, each linked to its blob
        try:
            store.check_model(record)
        except IntegrityError as exc:
            result.problems.append(str(exc))
    if entry.signer is not None:
        signer = policy.signers[entry.signer]
        if record.signature_digest is None:
            result.signature = "invalid"
            result.problems.append("the policy names a signer but the store holds no signature")
        else:
            try:
                store.rehash_blob(record.signature_digest)
                verify_model_signature(
                    signer, record.folder, store.blob_path(record.signature_digest), files=digests
                )
                result.signature = "verified"
            except (SignatureError, IntegrityError) as exc:
                result.signature = "invalid"
                result.problems.append(f"signature: {exc}")
    if result.problems:
        result.status = "tampered"
    return result


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload.store import Store

    policy = load_policy(args)
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
                "problems": r.problems,
            }
            for r in results
        ],
        "blobs_checked": blob_report.checked if blob_report else None,
        "bad_blobs": bad_blobs,
    }

    def render(out: Console) -> None:
        table = Table(title=f"store {policy.store}", title_justify="left")
        for col in ("model", "status", "files", "signature"):
            table.add_column(col)
        colour = {"ok": "green", "tampered": "bold red", "absent": "yellow"}
        for r in results:
            label = f"{r.name} (dataset)" if r.kind == "dataset" else r.name
            table.add_row(label, f"[{colour[r.status]}]{r.status}[/]", str(r.files), r.signature)
        out.print(table)
        for r in results:
            for problem in r.problems:
                out.print(f"{r.name}: {problem}", markup=False)
        if blob_report is not None:
            out.print(f"{blob_report.checked} blobs re-hashed, {len(bad_blobs)} bad", markup=False)
            for digest in bad_blobs:
                out.print(f"  modified blob: {digest}", markup=False)
        out.print(
            "intact" if not failed else "[bold red]tampering found[/]: run `safeload gc` and fetch again"
        )

    ui.emit(data, render)
    return EXIT_FINDING if failed else EXIT_OK
