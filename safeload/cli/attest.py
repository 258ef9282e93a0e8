"""``safeload attest``: sign an evaluation's results over the exact files of a model."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rich.console import Console

from safeload._trust.hashing import hash_fd
from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_OK, UI
from safeload.errors import PolicyError

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Write an evaluation attestation: an in-toto statement whose subjects are every file of the model with
its sha256 and whose predicate carries the metrics (and optionally the dataset evaluated on and the
evaluation code's revision), signed with an ECDSA private key into a Sigstore bundle, the envelope
model-signing uses (with --certificate-chain, the bundle carries the key's certificate chain, for a
certificate signer). A model entry with require_evaluation = { signer = ..., metrics = { "f1" = ">= 0.9" } }
then loads only when such an attestation from that signer covers the very bytes being loaded and every
metric holds.

MODEL is a folder (the evaluated model, before it is published; the attestation is appended to
FOLDER/evaluation.intoto.jsonl unless -o says otherwise) or a [models] name, whose verified files in
the store are attested (then -o is required).

The attestation covers every file of the folder (or of the verified model), and a model entry with
require_evaluation loads only when every file it serves is covered with the same digest: attest the model
as it is deployed, after its last file is added. A folder holding a symbolic link (to a file or a folder)
is refused: link the real files in, or copy them (cp -L).

--dataset names the [datasets] entry the metrics were measured on; when the policy pins that entry's
files, the attestation also records the digest of its pins (see docs/cli.md), which require_evaluation
compares with the policy's, so give --policy the policy that pins it.

METRICS is a JSON object: {"f1": 0.93} or {"f1": {"value": 0.93, "confidence_interval": [0.91, 0.95]}}."""

_EPILOG = """\
examples:
  safeload attest out/model --metrics eval/metrics.json --key eval.key --dataset reviews
  safeload attest acme/sentiment --metrics m.json --key eval.key -o evaluation.intoto.jsonl

exit codes: 0 written, 1 refused (the model failed verification), 2 error (bad metrics, key or arguments)."""

_SKIP = ("evaluation.intoto.jsonl", "model.sig")


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "attest",
        help="sign evaluation results over a model's exact files",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("model", metavar="MODEL", help="a model folder, or a name from [models]")
    parser.add_argument("--metrics", metavar="METRICS", type=Path, required=True, help="the results (JSON)")
    parser.add_argument("--key", metavar="KEY", type=Path, required=True, help="ECDSA private key (PEM)")
    parser.add_argument(
        "--certificate-chain",
        metavar="PEM",
        type=Path,
        nargs="+",
        help="sign as a certificate signer: the key's certificate, then its intermediates",
    )
    parser.add_argument("--dataset", metavar="NAME", help="the [datasets] entry evaluated on")
    parser.add_argument("--evaluator-revision", metavar="REV", help="the evaluation code's commit")
    parser.add_argument("-o", "--output", metavar="FILE", type=Path, help="the .intoto.jsonl to append to")
    add_policy(parser)
    parser.set_defaults(run=run)


def _metrics(path: Path) -> list[Any]:
    from safeload._trust.attestation import Metric

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{path}: not a readable JSON object of metrics ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise PolicyError(f'{path}: expected an object such as {{"f1": 0.93}}')
    out = []
    for name, value in sorted(data.items()):
        ci = None
        if isinstance(value, dict):
            ci_raw = value.get("confidence_interval")
            ci = (
                (float(ci_raw[0]), float(ci_raw[1]))
                if isinstance(ci_raw, list) and len(ci_raw) == 2
                else None
            )
            value = value.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(f"{path}: metric {name!r} is {value!r}, not a number")
        out.append(Metric(name=name, value=float(value), confidence_interval=ci))
    return out


def _refuse_link(folder: Path, path: Path) -> PolicyError:
    rel = path.relative_to(folder).as_posix()
    return PolicyError(
        f"{folder}: {rel} is a symbolic link (to {os.readlink(path)}); an attestation covers the model's "
        "own files, and a load serves them as they are: replace the link with what it points to "
        f"(cp -L) or remove it, then attest again"
    )


def _folder_files(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` with its sha256 (the attestation and signature excepted).

    Raises:
        PolicyError: a file or folder inside is a symbolic link, or a file is not a regular file.
    """
    files: dict[str, str] = {}
    for dirpath, dirs, names in os.walk(folder):
        for name in sorted(dirs):
            if (Path(dirpath) / name).is_symlink():
                raise _refuse_link(folder, Path(dirpath) / name)
        for name in names:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel in _SKIP:
                continue
            if path.is_symlink():
                raise _refuse_link(folder, path)
            if not path.is_file():
                raise PolicyError(f"{folder}: {rel} is not a regular file; remove it, then attest again")
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                files[rel], _ = hash_fd(fd, mapped=False)  # someone else's files: read, never mapped
            finally:
                os.close(fd)
    return files


def _dataset_pins(args: argparse.Namespace) -> str | None:
    """The pin-set digest of the [datasets] entry --dataset names, when the policy pins its files."""
    from safeload._trust.attestation import dataset_digest

    if args.dataset is None:
        return None
    entry = load_policy(args).datasets.get(args.dataset)
    return dataset_digest(entry.files) if entry is not None and entry.files else None


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._trust.attestation import sign_statement, statement

    metrics = _metrics(args.metrics)
    dataset_pins = _dataset_pins(args)
    if os.path.isdir(args.model):
        files = _folder_files(Path(args.model))
        output = args.output or Path(args.model) / "evaluation.intoto.jsonl"
    else:
        from safeload._trust.resolve import fetch_model

        if args.output is None:
            raise PolicyError("attesting a [models] name: give -o FILE for the attestation")
        policy = load_policy(args)
        entry = policy.models.get(args.model)
        if entry is not None and entry.require_evaluation is not None:
            # The bytes are attested before an evaluation exists: verify pins and signature only.
            models = dict(policy.models)
            models[args.model] = replace(entry, require_evaluation=None)
            policy = replace(policy, models=MappingProxyType(models))
        files = dict(fetch_model(args.model, policy=policy).files)
        output = args.output
    try:
        key = args.key.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{args.key}: cannot read the signing key ({exc.strerror})") from None
    payload = statement(
        files,
        metrics,
        dataset=args.dataset,
        evaluator_revision=args.evaluator_revision,
        dataset_pins=dataset_pins,
    )
    chain = []
    for pem in args.certificate_chain or ():
        try:
            chain.append(pem.read_bytes())
        except OSError as exc:
            raise PolicyError(f"{pem}: cannot read the certificate ({exc.strerror})") from None
    line = sign_statement(payload, key, chain)
    with open(output, "ab") as fh:
        fh.write(line)
    data = {
        "output": str(output),
        "files": len(files),
        "metrics": {m.name: m.value for m in metrics},
        "dataset": args.dataset,
        "dataset_digest": dataset_pins,
    }

    def render(console: Console) -> None:
        shown = ", ".join(f"{m.name} = {m.value:g}" for m in metrics)
        console.print(f"attested {len(files)} files ({shown}) in {output}", markup=False)

    ui.emit(data, render)
    return EXIT_OK
