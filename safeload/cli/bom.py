"""``safeload bom``: a CycloneDX 1.6 ML-BOM of the models a policy deploys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_ERROR, EXIT_OK, UI
from safeload.errors import UntrustedSourceError

if TYPE_CHECKING:
    from safeload._supply.bom import BomModel
    from safeload.policy import Policy

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Write a CycloneDX 1.6 ML-BOM (JSON) of the models the policy pins. Each model is fetched and verified
through the store first (offline when the store already holds it), so the BOM records only what passed:
one machine-learning-model component per model (purl pkg:huggingface/ORG/NAME@COMMIT), every file as a
nested file component with its sha256, the signer, its identity and the verification result as
safeload:* properties, and a modelCard with the architecture and task from config.json and the datasets
and task the policy declares; a model pulled from an OCI registry with a CycloneDX BOM attached links that
upstream BOM (BOM-Link and sha256) from its component. Each [datasets] entry a model names is a data
component with every file's sha256, its revision and registry, referenced from the model card and the
model's dependencies; a model's base_model is described too, with a dependency edge. The libraries
that load the models (safeload, torch, transformers, safetensors) are library components with their
installed versions, linked in the dependency graph.

The document is validated against the CycloneDX 1.6 JSON schema before it is written; an invalid BOM is
an error and no file is written."""

_EPILOG = """\
examples:
  safeload bom -o bom.json                  # every model in the policy
  safeload bom acme/sentiment -o - | jq .   # one model, to stdout

exit codes: 0 written, 1 refused (a model failed verification, a name not in the policy), 2 error
(including a BOM that does not validate)."""


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "bom",
        help="write a CycloneDX 1.6 ML-BOM of the pinned models",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("names", metavar="NAME", nargs="*", help="model names from [models] (default: all)")
    parser.add_argument(
        "-o", "--output", metavar="FILE", required=True, help="where to write the BOM ('-': stdout)"
    )
    add_policy(parser)
    parser.set_defaults(run=run)


def _bom_model(name: str, policy: Policy) -> BomModel:
    from safeload._supply.bom import bom_model
    from safeload._trust.resolve import fetch_model

    return bom_model(fetch_model(name, policy=policy, progress=sys.stderr.isatty()), policy)


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._supply.bom import build_bom, write_bom

    policy = load_policy(args)
    names: list[str] = list(args.names) or sorted(policy.models)
    if not names:
        ui.error(f"the policy {policy.source or '(built-in default)'} pins no [models]; nothing to describe")
        return EXIT_ERROR
    unknown = [n for n in names if n not in policy.models]
    if unknown:
        raise UntrustedSourceError(
            f"not in the policy's [models]: {', '.join(unknown)}; pin them first with `safeload pin`"
        )
    # A fine-tune's base model is part of its lineage: described too, with a dependency edge to it.
    for name in list(names):
        base = policy.models[name].base_model
        while base is not None and base not in names:
            names.append(base)
            base = policy.models[base].base_model
    models = [_bom_model(name, policy) for name in names]
    document = build_bom(models)
    if args.output == "-":
        import json

        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return EXIT_OK
    out = Path(args.output)
    write_bom(document, out)
    summary: dict[str, Any] = {
        "output": str(out),
        "serialNumber": document.get("serialNumber"),
        "models": [
            {"name": m.name, "purl": str(_purl(document, m.name)), "files": len(m.files)} for m in models
        ],
    }

    def render(console: Console) -> None:
        console.print(f"wrote {out}: CycloneDX 1.6 ML-BOM, {len(models)} models, validated", markup=False)
        for m in summary["models"]:
            console.print(f"  {m['name']}  {m['purl']}  ({m['files']} files)", markup=False)

    ui.emit(summary, render)
    return EXIT_OK


def _purl(document: dict[str, Any], name: str) -> str | None:
    for component in document.get("components", []):
        props = {p["name"]: p.get("value") for p in component.get("properties", [])}
        if props.get("safeload:name") == name:
            purl = component.get("purl")
            return str(purl) if purl is not None else None
    return None
