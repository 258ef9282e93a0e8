"""``safeload pin``: write a ``[models]`` entry with every file's sha256, like a lock file."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from safeload.cli._common import command_parser
from safeload.cli._ui import EXIT_OK, UI
from safeload.errors import PolicyError, UntrustedSourceError

__all__ = ["add_parser", "run"]

_HF_REF = re.compile(r"^hf://[^@]+(?:@(.*))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

_DESCRIPTION = """\
Pin a model: fetch the list of its files at one commit, hash every file, and write (or update) its
[models."NAME"] entry in trust.toml with the registry, repository, revision and each file's sha256, the
way pip-compile --generate-hashes writes a lock file. Other entries and comments are left as they are.

The registry must be in trust.toml (safeload never assumes one); a missing trust.toml is refused with
the `safeload init` command that creates one.

URL forms:
  hf://ORG/NAME@COMMIT     a Hugging Face registry (the policy's registry of kind "huggingface", or
                           --registry); COMMIT must be a full 40-hex commit id. A branch or tag is
                           accepted only with --resolve, which prints the commit it resolved to and pins it.
  hf://datasets/ORG/NAME@COMMIT
                           a Hub dataset, written as a [datasets."NAME"] entry (same rules).
  dir://ORG/NAME           a directory registry (kind "directory"): the files under <path>/ORG/NAME.
  oci://HOST/REPO@sha256:DIGEST
                           an OCI registry (kind "oci") whose endpoint is HOST; DIGEST is the manifest's.
                           oci://HOST/REPO:TAG is accepted only with --resolve, which prints the digest.
  mlflow://REGISTRY/NAME/VERSION
                           a registered model version of the policy's mlflow registry REGISTRY: every file,
                           its size, the version's source and the flavor MLmodel names (after the checks a
                           load makes: a model that asks to run its own code is refused here, unless
                           --allow-code). A sklearn model's entry gets a commented trusted_types line
                           naming the types its skops file holds beyond skops's safe set: your decision.
  mlflow://REGISTRY/NAME@ALIAS
                           the version ALIAS names now; the entry pins that version, never the alias."""

_EPILOG = """\
examples:
  safeload pin hf://acme/sentiment-classifier@4c7f9e0f3b1a2d5e6f708192a3b4c5d6e7f80912 --name acme/sentiment
  safeload pin hf://acme/sentiment-classifier@main --resolve
  safeload pin hf://datasets/stanfordnlp/imdb@main --resolve --name imdb
  safeload pin dir://acme/sentiment --registry local --policy /etc/safeload/trust.toml
  safeload pin oci://registry.example.com/models/sentiment:v3 --resolve
  safeload pin mlflow://ml/sentiment@champion --name acme/sentiment

exit codes: 0 pinned, 1 refused (a branch without --resolve, a registry the policy does not allow),
2 error (no trust.toml or no registry of the URL's kind, policy invalid, registry unreachable)."""


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "pin",
        help="pin a model's files by sha256 into trust.toml",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument(
        "url", metavar="URL", help="hf://ORG/NAME@COMMIT, dir://ORG/NAME, oci://HOST/REPO@sha256:DIGEST or "
        "mlflow://REGISTRY/NAME/VERSION"
    )
    parser.add_argument("--registry", metavar="NAME", help="the [registries.NAME] to fetch from")
    parser.add_argument("--name", metavar="NAME", help="the name code asks for (default: the repository id)")
    parser.add_argument(
        "--resolve", action="store_true", help="accept a branch or tag and pin the commit it points at now"
    )
    parser.add_argument(
        "--allow-code",
        action="store_true",
        help="mlflow:// only: pin a model that runs its own code (a pyfunc, a code folder) with "
        "allow_code = true, after you reviewed that code; safeload.mlflow.pyfunc then runs it with mlflow",
    )
    parser.add_argument(
        "--policy",
        metavar="FILE",
        type=Path,
        default=None,
        help="the trust.toml to update (default: $SAFELOAD_POLICY, else ./trust.toml; `safeload init` "
        "creates one)",
    )
    parser.set_defaults(run=run)


def _policy_path(args: argparse.Namespace) -> Path:
    import os

    if args.policy is not None:
        return Path(args.policy)
    env = os.environ.get("SAFELOAD_POLICY")
    return Path(env).expanduser() if env else Path("trust.toml")


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._trust.pinning import pin_model

    match = _HF_REF.match(args.url)
    ref = match.group(1) if match is not None else None
    if match is not None and not _COMMIT.match(ref or "") and not args.resolve:
        what = f"{ref!r} is a branch or tag" if ref else "no revision (the default branch)"
        raise UntrustedSourceError(
            f"{args.url}: {what}, and branches move; give the 40-hex commit (hf://ORG/NAME@COMMIT), "
            "or pass --resolve to pin the commit it points at now"
        )
    path = _policy_path(args)
    if args.allow_code and not args.url.startswith("mlflow://"):
        raise PolicyError("--allow-code is for mlflow:// URLs; elsewhere set allow_code = true by hand")
    name, entry = pin_model(
        args.url, policy_path=path, registry=args.registry, name=args.name, resolve=args.resolve,
        allow_code=args.allow_code,
    )  # fmt: skip
    revision = entry.revision
    files = dict(entry.files)
    data = {
        "policy": str(path),
        "name": name,
        "registry": entry.registry,
        "repo": entry.repo,
        "revision": revision,
        "files": files,
    }

    def render(out: Console) -> None:
        if args.resolve and revision:
            kind = "digest" if revision.startswith("sha256:") else "commit"
            out.print(f"resolved {args.url} to {kind} {revision}", markup=False)
        at = f"@ {revision}" if revision else "no revision: directory registry"
        out.print(f"pinned {name} ({data['repo']} {at}) in {path}: {len(files)} files", markup=False)
        for rel, digest in sorted(files.items()):
            out.print(f"  {rel} = {digest}", markup=False)

    ui.emit(data, render)
    return EXIT_OK
