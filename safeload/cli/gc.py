"""``safeload gc``: remove store blobs no model references, and staging left by killed processes."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from safeload.cli._common import add_policy, command_parser, load_policy
from safeload.cli._ui import EXIT_OK, UI

__all__ = ["add_parser", "run"]

_DESCRIPTION = """\
Garbage-collect the verified store named by the policy's `store` key: remove blobs that no published
model folder or [files] pin references, manifests whose folder is gone, and staging folders left by
processes that were killed mid-download. Verified folders in use are never touched."""

_EPILOG = """\
examples:
  safeload gc
  safeload gc --policy /etc/safeload/trust.toml --json

exit codes: 0 done, 2 error."""


def add_parser(sub: Any) -> None:
    parser = command_parser(
        sub, "gc", help="remove unreferenced blobs from the store", description=_DESCRIPTION, epilog=_EPILOG
    )
    add_policy(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, ui: UI) -> int:
    from safeload._trust.store import Store

    policy = load_policy(args)
    report = Store(policy.store).gc()
    data = {
        "store": str(policy.store),
        "removed_blobs": list(report.removed_blobs),
        "freed_bytes": report.freed_bytes,
        "removed_staging": report.removed_staging,
    }

    def render(out: Console) -> None:
        out.print(
            f"{policy.store}: removed {len(report.removed_blobs)} blobs ({report.freed_bytes} bytes) and "
            f"{report.removed_staging} staging folders",
            markup=False,
        )

    ui.emit(data, render)
    return EXIT_OK
