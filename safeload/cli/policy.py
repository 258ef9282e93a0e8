"""``safeload policy check``: validate a ``trust.toml`` and show what each name resolves to."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from safeload.cli._common import command_parser
from safeload.cli._ui import EXIT_FINDING, EXIT_OK, UI
from safeload.errors import PolicyError

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Validate a policy file and print, for every [models] name, the registry, repository, revision, number of
pinned files and signer it resolves to. Without FILE, checks the policy safeload would use here:
$SAFELOAD_POLICY, ./trust.toml, ~/.config/safeload/trust.toml, else the built-in default."""

_EPILOG = """\
examples:
  safeload policy check
  safeload policy check /etc/safeload/trust.toml --json

exit codes: 0 valid, 1 invalid (the message names the dotted path of the bad field), 2 error."""


def add_parser(sub: Any) -> None:
    group = sub.add_parser(
        "policy",
        help="work with trust.toml (policy check)",
        description="Work with trust.toml policies.",
    )
    actions = group.add_subparsers(title="actions", metavar="ACTION", dest="action", required=True)
    parser = command_parser(
        actions,
        "check",
        help="validate a policy and show what each name resolves to",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("file", metavar="FILE", nargs="?", type=Path, help="the policy file to check")
    parser.set_defaults(run=run)


def _where(policy: Any, registry: str) -> tuple[str, str]:
    spec = policy.registries.get(registry)
    if spec is None:
        return "?", "?"
    if spec.kind == "directory":
        return spec.kind, str(spec.path)
    return spec.kind, str(spec.endpoint)


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload.policy import discover_policy_path, load_policy

    path: Path | None = args.file if args.file is not None else discover_policy_path()
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        message = str(exc)
        data: dict[str, Any] = {"policy": str(path) if path else None, "valid": False, "error": str(exc)}
        ui.emit(data, lambda out: out.print(f"invalid: {message}", markup=False))
        return EXIT_FINDING
    models: list[dict[str, Any]] = []
    for name, entry in sorted(policy.models.items()):
        kind, where = _where(policy, entry.registry)
        models.append(
            {
                "name": name,
                "registry": entry.registry,
                "kind": kind,
                "location": where,
                "repo": entry.repo,
                "revision": entry.revision,
                "files": len(entry.files),
                "signer": entry.signer,
            }
        )
    data = {
        "policy": str(policy.source) if policy.source else None,
        "valid": True,
        "mode": policy.mode,
        "store": str(policy.store),
        "require_signatures": policy.require_signatures,
        "sandbox": {
            "unpickler": policy.sandbox.unpickler,
            "timeout_s": policy.sandbox.timeout_s,
            "memory_bytes": policy.sandbox.memory_bytes,
            "max_output_bytes": policy.sandbox.max_output_bytes,
        },
        "registries": sorted(policy.registries),
        "signers": sorted(policy.signers),
        "models": models,
        "pinned_local_files": len(policy.files),
    }

    def render(out: Console) -> None:
        source = policy.source or "the built-in default (local files only, always sandboxed)"
        out.print(f"valid: {source}", markup=False)
        out.print(
            f"mode {policy.mode}, store {policy.store}, unpickler {policy.sandbox.unpickler}, "
            f"{len(policy.files)} pinned local files",
            markup=False,
        )
        if models:
            table = Table(title="names", title_justify="left")
            for col in ("name", "registry", "resolves to", "revision", "files", "signer"):
                table.add_column(col)
            for m in models:
                table.add_row(
                    m["name"],
                    f"{m['registry']} ({m['kind']})",
                    f"{m['location']} {m['repo']}",
                    str(m["revision"] or "(pinned by hashes)"),
                    str(m["files"]),
                    m["signer"] or "-",
                )
            out.print(table)
        else:
            out.print("no [models]: no remote name resolves")

    ui.emit(data, render)
    return EXIT_OK
