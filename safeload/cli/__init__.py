"""The ``safeload`` command line.

A thin layer over the library: every command calls the same code paths ``safeload.load`` and the
drop-ins use (the jail, the policy, the verified store), never a second implementation. One module per
command; each defines ``add_parser(subparsers)`` and ``run(args, ui) -> int``.

Exit codes (the same for every command):

* ``0`` — success; for ``inspect``, the file holds only data.
* ``1`` — the command ran and the answer is "no": ``inspect`` found code-bearing globals, ``verify`` found
  a file that does not match its pin or signature, a name or file is not allowed by the policy, ``policy
  check`` found the policy invalid.
* ``2`` — the command could not do its job: bad arguments, an unreadable or unsupported file, an invalid
  policy (outside ``policy check``), no sandbox, a registry that cannot be reached.
* ``130`` — interrupted.

Errors are one line on stderr, never a traceback; ``SAFELOAD_DEBUG=1`` re-raises unexpected exceptions.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from safeload.cli._ui import EXIT_ERROR, EXIT_FINDING, UI
from safeload.errors import (
    EvaluationError,
    IntegrityError,
    SafeloadError,
    SignatureError,
    UnsafeContentError,
    UntrustedSourceError,
)

__all__ = ["main"]

_DESCRIPTION = """\
Load models without running code from strangers.

safeload opens pickle-family checkpoints only inside a bubblewrap jail, resolves model names only through
the allowlist in trust.toml, and checks every file against pinned sha256 digests and signatures."""

_EPILOG = """\
examples:
  safeload init --dir ./models                a starter trust.toml with a directory registry
  safeload pin dir://acme/sentiment           pin ./models/acme/sentiment: every file's sha256
  safeload inspect downloaded.ckpt            what a checkpoint holds and what code it references
  safeload convert model.bin model.safetensors
  safeload pin hf://acme/sentiment@4c7f9e0f3b1a2d5e6f708192a3b4c5d6e7f80912
  safeload prefetch --all                     at image build time, so the container starts offline
  safeload verify                             re-hash the store against the policy and signatures
  safeload bom -o bom.json                    CycloneDX 1.6 ML-BOM of the deployed models

exit codes: 0 ok, 1 refused or finding (code-bearing globals, tampering, not allowed), 2 error.
Every command takes --json for machine-readable output. Docs: docs/cli.md"""

# Failures that are answers ("this is not allowed / not intact"), not malfunctions.
_FINDINGS: tuple[type[SafeloadError], ...] = (
    EvaluationError,
    IntegrityError,
    SignatureError,
    UntrustedSourceError,
    UnsafeContentError,
)


def exit_code(exc: SafeloadError) -> int:
    """The exit code for a command stopped by ``exc``: 1 for a refusal, 2 for a malfunction."""
    return EXIT_FINDING if isinstance(exc, _FINDINGS) else EXIT_ERROR


def _commands() -> tuple[ModuleType, ...]:
    from safeload.cli import (
        attest,
        bom,
        convert,
        doctor,
        gc,
        init,
        inspect,
        pin,
        policy,
        prefetch,
        push,
        verify,
    )

    return (init, inspect, convert, pin, verify, prefetch, policy, gc, bom, push, attest, doctor)


def _version() -> str:
    from safeload import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``safeload`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="safeload",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"safeload {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command", required=True)
    for module in _commands():
        module.add_parser(sub)
    return parser


def guarded(run: Callable[[], int], *, about: str = "", one_line: bool = False) -> int:
    """Call ``run`` and return its exit code; a failure is printed, never as a traceback, as
    ``safeload: error:`` and its message on stderr (after ``about:`` when given) and answered with its
    exit code: 1 for a refusal, 2 for a malfunction, 130 when interrupted. ``one_line`` joins a
    message's lines (for logs read a line per event); otherwise a message keeps its own line breaks (a
    policy snippet to paste).

    Raises:
        Exception: whatever ``run`` raised that is neither a ``SafeloadError`` nor an ``OSError``, but only
            when ``SAFELOAD_DEBUG`` is set; otherwise that is one line too, with how to get the traceback.
    """
    prefix = f"safeload: error: {about}: " if about else "safeload: error: "
    try:
        return run()
    except KeyboardInterrupt:
        print("safeload: interrupted", file=sys.stderr)
        return 130
    except SafeloadError as exc:
        text = str(exc)
        if one_line:
            text = " ".join(line.strip() for line in text.splitlines() if line.strip())
        print(prefix + text, file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{prefix}{exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        # A bug, not a verdict: still one line, with a way to get the traceback for a report.
        if os.environ.get("SAFELOAD_DEBUG"):
            raise
        hint = "set SAFELOAD_DEBUG=1 for the traceback"
        print(f"{prefix}unexpected {type(exc).__name__}: {exc} ({hint})", file=sys.stderr)
        return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Errors are printed as one line on stderr (the ``SafeloadError`` message), never as a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    ui = UI(json_mode=bool(getattr(args, "json", False)))
    return guarded(lambda: args.run(args, ui))
