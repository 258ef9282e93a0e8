"""Options and helpers shared by the commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safeload.policy import Policy

__all__ = ["add_json", "add_policy", "command_parser", "load_policy"]


def command_parser(
    sub: Any, name: str, *, help: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A subcommand parser whose description and examples keep their line breaks."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_json(parser)
    return parser


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="FILE",
        type=Path,
        help="trust.toml to use (default: $SAFELOAD_POLICY, ./trust.toml, ~/.config/safeload/trust.toml, "
        "then the built-in default)",
    )


def load_policy(args: argparse.Namespace) -> Policy:
    """The policy named by ``--policy``, or the one found by the usual discovery order.

    Raises:
        PolicyError: the policy file is malformed.
    """
    from safeload.policy import load_policy as _load

    path: Path | None = getattr(args, "policy", None)
    return _load(path)
