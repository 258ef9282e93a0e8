"""``safeload prefetch``: fetch, verify and convert at build time so a container starts offline."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_ERROR, EXIT_OK, UI
from safeload.errors import UntrustedSourceError
from safeload.policy import MlflowRegistrySpec

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Fetch every file a model needs from its allowlisted registry at the pinned revision, verify each against
its pinned sha256 (and the signer's signature) into the store, and convert pickle weights
(pytorch_model.bin, sharded .bin with an index) to safetensors in the jail, the same way
safeload.transformers does on first load. An MLflow entry is fetched the same way (its version's source,
run and file list checked against the pins first) and its MLmodel checked as a load checks it, so a model
that asks to run its own code fails here. Run it when building an image: afterwards loads need no network
(set HF_HUB_OFFLINE=1 in the container to be sure).

--refetch repairs a model whose stored copy was damaged (a load or `safeload verify` reports tampering):
it drops the model's folder from the store, and every blob of it whose bytes no longer match their
sha256, then fetches and verifies it again from its registry against the same pins."""

_EPILOG = """\
examples:
  safeload prefetch --all                       # in a Dockerfile, after COPY trust.toml
  safeload prefetch acme/sentiment acme/ner --json
  safeload prefetch --refetch acme/sentiment      # after a load reported a tampered store copy

exit codes: 0 every model ready, 1 refused (hash or signature mismatch, name not in the policy),
2 error (registry unreachable, sandbox failure, nothing to prefetch)."""


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "prefetch",
        help="fetch, verify and convert models so a container starts offline",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("names", metavar="NAME", nargs="*", help="names from [models] or [datasets]")
    parser.add_argument("--all", action="store_true", help="every model and dataset in the policy")
    parser.add_argument(
        "--refetch",
        action="store_true",
        help="drop the named models' store folders and damaged blobs first, then fetch them again",
    )
    add_policy(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._integrations.folder import prepare
    from safeload._trust.resolve import fetch_dataset

    policy = load_policy(args)
    if args.all and args.names:
        ui.error("give model names or --all, not both")
        return EXIT_ERROR
    names: list[str] = [*sorted(policy.models), *sorted(policy.datasets)] if args.all else list(args.names)
    if not names:
        ui.error(
            f"nothing to prefetch: name models or pass --all (the policy {policy.source or '(built-in)'} "
            f"has {len(policy.models)} [models] entries)"
        )
        return EXIT_ERROR
    unknown = [n for n in names if n not in policy.models and n not in policy.datasets]
    if unknown:
        raise UntrustedSourceError(
            f"not in the policy's [models] or [datasets]: {', '.join(unknown)}; pin them first with "
            "`safeload pin`"
        )
    refetched: dict[str, list[str]] = {}
    if args.refetch:
        from safeload._trust.store import Store

        store = Store(policy.store)
        for name in names:
            entry = policy.models.get(name) or policy.datasets[name]
            removed = store.drop_model(entry.registry, entry.store_repo, entry.store_revision())
            refetched[name] = list(removed)
            damaged = f", with {len(removed)} damaged blobs" if removed else ""
            ui.note(f"dropped {name} from the store{damaged}; fetching it again")
    ready: list[dict[str, Any]] = []
    for name in names:
        if name not in policy.models:  # a dataset: fetched and verified, nothing to convert
            fetched = fetch_dataset(name, policy=policy)
            ready.append(
                {
                    "name": name,
                    "kind": "dataset",
                    "revision": fetched.entry.revision,
                    "folder": str(fetched.folder),
                    "converted": [],
                    "excluded": [],
                }
            )
            ui.note(f"ready: dataset {name} -> {fetched.folder}")
            continue
        entry = policy.models[name]
        if isinstance(policy.registries.get(entry.registry), MlflowRegistrySpec):
            from safeload.mlflow import fetch as fetch_mlflow

            got = fetch_mlflow(name, entry.flavor or "", policy=policy)
            ready.append(
                {"name": name, "kind": "model", "revision": entry.revision, "folder": str(got.fetched.folder),
                 "converted": [], "excluded": [], "flavor": got.mlmodel.flavor}
            )  # fmt: skip
            ui.note(f"ready: {name} (mlflow {entry.repo} version {entry.revision}) -> {got.fetched.folder}")
            continue
        prepared = prepare(
            name, weights=True, trust_remote_code=bool(getattr(entry, "allow_code", False)), policy=policy
        )
        ready.append(
            {
                "name": name,
                "kind": "model",
                "revision": prepared.revision,
                "folder": str(prepared.folder),
                "converted": sorted(prepared.converted),
                "excluded": list(prepared.excluded),
            }
        )
        ui.note(f"ready: {name} -> {prepared.folder}")
    data: dict[str, Any] = {"store": str(policy.store), "models": ready}
    if args.refetch:
        data["refetched"] = [{"name": n, "removed_blobs": b} for n, b in refetched.items()]

    def render(out: Console) -> None:
        table = Table(title="prefetched", title_justify="left")
        for col in ("model", "revision", "converted to safetensors", "left out (pickles)"):
            table.add_column(col)
        for m in ready:
            table.add_row(
                m["name"],
                str(m["revision"] or "none (directory registry)"),
                ", ".join(m["converted"]) or "-",
                ", ".join(m["excluded"]) or "-",
            )
        out.print(table)

    ui.emit(data, render)
    return EXIT_OK
