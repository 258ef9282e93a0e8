"""``trust.toml``: the policy that decides what may be loaded, from where, and how.

The shapes below are the contract other modules read; parsing, validation and discovery live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

__all__ = ["Policy", "SandboxSettings"]

_GiB = 1 << 30


@dataclass(frozen=True)
class SandboxSettings:
    """``[sandbox]``: how the jail runs pickle-family artifacts."""

    unpickler: Literal["inert", "execute"] = "inert"
    timeout_s: float = 120.0
    memory_bytes: int = 8 * _GiB
    max_output_bytes: int = 64 * _GiB


@dataclass(frozen=True)
class Policy:
    """A parsed ``trust.toml`` (or the built-in default)."""

    version: int = 1
    mode: Literal["enforce", "audit"] = "enforce"
    store: Path = Path("~/.cache/safeload").expanduser()
    audit_log: Path | None = None
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    # local path (absolute, as written) -> "sha256:<hex>"
    files: Mapping[str, str] = field(default_factory=dict)
    source: Path | None = None  # the file it was read from; None for the built-in default
