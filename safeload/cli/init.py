"""``safeload init``: write a commented starter ``trust.toml`` with the registries the user names."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from safeload.cli._common import command_parser
from safeload.cli._ui import EXIT_ERROR, EXIT_OK, UI

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Write a starter trust.toml: version, mode = "enforce", the store, the [sandbox] limits, and the
registries you name, each key with a comment saying what it allows. Registries are where model bytes
come from; safeload never assumes one, so name at least one to pin models from:

  --dir PATH      [registries.local], a directory registry: a folder laid out as PATH/ORG/NAME/<files>,
                  pinned with `safeload pin dir://ORG/NAME`
  --hub URL       [registries.hub], a Hugging Face hub or mirror at URL, pinned with
                  `safeload pin hf://ORG/NAME@COMMIT`

An existing file is never overwritten. Paths are written relative to the new file's folder when they
lie inside it (trust.toml resolves relative paths against its own folder), absolute otherwise."""

_EPILOG = """\
examples:
  safeload init --dir ./models                  then: safeload pin dir://ORG/NAME
  safeload init --hub https://huggingface.co    then: safeload pin hf://ORG/NAME@COMMIT
  safeload init --dir /srv/models --store /var/cache/safeload -o /etc/safeload/trust.toml

exit codes: 0 written, 2 error (the file exists, a bad endpoint)."""


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub,
        "init",
        help="write a commented starter trust.toml",
        description=_DESCRIPTION,
        epilog=_EPILOG,
    )
    parser.add_argument("--dir", metavar="PATH", type=Path, help="add a directory registry named local")
    parser.add_argument("--hub", metavar="URL", help="add a huggingface registry named hub at URL")
    parser.add_argument(
        "--store", metavar="PATH", help="the verified store (default: ~/.cache/safeload)", default=None
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        type=Path,
        default=None,
        help="the file to write (default: $SAFELOAD_POLICY, else ./trust.toml, where `safeload pin` looks)",
    )
    parser.set_defaults(run=run)


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies inside it, else absolute."""
    absolute = Path(os.path.abspath(path.expanduser()))
    try:
        rel = absolute.relative_to(base)
    except ValueError:
        return str(absolute)
    return rel.as_posix() if rel.parts else "."


def starter_policy(
    base: Path, *, directory: Path | None = None, hub: str | None = None, store: str | None = None
) -> str:
    """The text of a starter ``trust.toml`` that will live in the folder ``base``."""
    store_text = "~/.cache/safeload" if store is None else store
    if store is not None and not store.startswith("~"):
        store_text = _relative(Path(store), base)
    parts = [
        "# trust.toml: what safeload may load, from where, and how. Written by `safeload init`; every key",
        "# is documented in trust.toml.example (safeload's repository). Relative paths resolve against the",
        "# folder this file is in. Pin models with `safeload pin`, which appends [models] entries below.",
        "",
        "# Format version of this file.",
        "version = 1",
        "",
        '# "enforce": only names pinned in [models] load; anything else raises UntrustedSourceError.',
        '# "audit": unpinned names load too (sandboxed) and are logged. Hash failures are fatal in both.',
        'mode = "enforce"',
        "",
        "# The verified store: read-only blobs named by their sha256 and a read-only folder per model.",
        f"store = {_q(store_text)}",
        "",
        "[sandbox]",
        '# "inert": pickles are read by an unpickler that builds data only and never calls a global.',
        '# "execute": the checkpoint\'s own code runs (real torch.load), inside the jail only.',
        'unpickler = "inert"',
        "# Limits for one sandboxed load: wall clock and address space.",
        'timeout = "120s"',
        'memory = "8GiB"',
        "",
        "# Registries: where model bytes come from. A model names exactly one; there is no fallback and",
        "# no implicit registry.",
    ]
    if directory is not None:
        parts += [
            "[registries.local]",
            "# A local folder laid out as <path>/ORG/NAME/<files>; pin with `safeload pin dir://ORG/NAME`.",
            'kind = "directory"',
            f"path = {_q(_relative(directory, base))}",
            "",
        ]
    if hub is not None:
        parts += [
            "[registries.hub]",
            "# A Hugging Face hub or mirror, reached at this endpoint only (downloads run in a jail);",
            "# pin with `safeload pin hf://ORG/NAME@COMMIT` (a 40-hex commit, or --resolve a branch).",
            'kind = "huggingface"',
            f"endpoint = {_q(hub.rstrip('/'))}",
            "",
        ]
    if directory is None and hub is None:
        parts += [
            "# None yet. Uncomment one (or run `safeload init --dir PATH` / `--hub URL` in a new folder):",
            "# [registries.local]",
            '# kind = "directory"',
            '# path = "models"',
            "# [registries.hub]",
            '# kind = "huggingface"',
            '# endpoint = "https://huggingface.co"',
            "",
        ]
    return "\n".join(parts)


def _output(args: argparse.Namespace) -> Path:
    if args.output is not None:
        return Path(args.output)
    env = os.environ.get("SAFELOAD_POLICY")
    return Path(env).expanduser() if env else Path("trust.toml")


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload.policy import parse_policy

    path = _output(args)
    if path.exists() or path.is_symlink():
        ui.error(
            f"{path} exists; safeload init never overwrites a policy. Edit it (see trust.toml.example), "
            "or write a new one elsewhere with -o FILE"
        )
        return EXIT_ERROR
    base = Path(os.path.abspath(path)).parent
    text = starter_policy(base, directory=args.dir, hub=args.hub, store=args.store)
    policy = parse_policy(text, source=path)  # a bad endpoint is refused before anything is written
    base.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    registries = {name: spec.__class__.__name__ for name, spec in policy.registries.items()}
    if args.dir is not None and not args.dir.expanduser().is_dir():
        ui.note(f"note: {args.dir} does not exist yet; put models in it as {args.dir}/ORG/NAME/<files>")
    nexts = []
    if args.dir is not None:
        nexts.append("safeload pin dir://ORG/NAME")
    if args.hub is not None:
        nexts.append("safeload pin hf://ORG/NAME@COMMIT")
    data = {"policy": str(path), "store": str(policy.store), "registries": sorted(registries), "next": nexts}

    def render(out: Console) -> None:
        names = ", ".join(sorted(registries)) or "none (add one before pinning)"
        out.print(f"wrote {path} (registries: {names}; store: {policy.store})", markup=False)
        for cmd in nexts:
            out.print(f"next: {cmd}", markup=False)

    ui.emit(data, render)
    return EXIT_OK
