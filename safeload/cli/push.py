"""``safeload push``: publish a verified model as an OCI artifact with its signature and ML-BOM."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_OK, UI

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Publish a model the policy pins (from any registry kind) to an OCI registry as a CNCF ModelPack
artifact. The model is verified through the store first (pins and signature), and only the store's
verified bytes are uploaded: one layer per file, named by org.cncf.model.filepath. Its model-signing
bundle (when the entry names a signer) and the CycloneDX ML-BOM that `safeload bom` writes are attached
to the manifest as OCI 1.1 referrers (the referrers tag schema sha256-<hex> is kept for registries
without the referrers API).

The target's host must be the endpoint of one [registries.NAME] kind = "oci" in the policy; credentials
come from that entry (token_env) or your docker config and are sent to that endpoint only. The command
prints the manifest digest and the [models] entry that pins it: paste it into the trust.toml of the
machines that pull the model."""

_EPILOG = """\
examples:
  safeload push acme/sentiment oci://registry.internal/models/sentiment:v3
  safeload push acme/sentiment oci://127.0.0.1:5000/acme/sentiment:v1 --json

exit codes: 0 pushed, 1 refused (the model failed verification, a name not in the policy), 2 error
(registry unreachable or refusing the upload, no oci registry for the host)."""


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "push",
        help="publish a verified model to an OCI registry, signature and ML-BOM attached",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("name", metavar="NAME", help="the model's name in [models]")
    parser.add_argument("target", metavar="oci://HOST/REPO:TAG", help="where to publish it")
    parser.add_argument(
        "--registry", metavar="NAME", help="the oci registry entry, when several share the host"
    )
    add_policy(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._supply.publish import push_model
    from safeload._trust.pinning import render_entry

    policy = load_policy(args)
    result = push_model(
        args.name, args.target, policy=policy, registry=args.registry, progress=sys.stderr.isatty()
    )
    entry_text = render_entry(result.entry)
    data = {
        "name": args.name,
        "target": args.target,
        "reference": result.reference,
        "digest": result.digest,
        "uploaded_bytes": result.uploaded,
        "attached": list(result.attached),
        "entry": entry_text,
    }

    def render(console: Console) -> None:
        console.print(f"pushed {args.name} to {args.target}", markup=False)
        console.print(f"  manifest {result.digest}", markup=False)
        console.print(f"  attached {', '.join(result.attached)}", markup=False)
        console.print("pin it on the machines that pull it (trust.toml):\n", markup=False)
        console.print(entry_text, markup=False)

    ui.emit(data, render)
    return EXIT_OK
