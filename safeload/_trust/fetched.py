"""What resolution hands back: a verified, read-only model folder, and the BOM its registry attached.

A leaf of the trust chain: the loader, the drop-ins and the BOM writer read these without importing
how they were produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safeload._trust.signers import (
    VerifiedSignature,
)
from safeload.policy import ModelEntry

if TYPE_CHECKING:
    from safeload._trust.attestation import Evaluation


__all__ = ["FetchedModel", "UpstreamBom"]


@dataclass(frozen=True)
class UpstreamBom:
    """The BOM a model's publisher attached to it (OCI referrers), schema-checked and kept in the store:
    its sha256, and the ``urn:cdx:`` BOM-Link that names it when it has a serial number."""

    digest: str
    path: Path
    link: str | None


@dataclass(frozen=True)
class FetchedModel:
    """A model whose pinned (or signed) files are verified in the store."""

    name: str
    entry: ModelEntry
    folder: Path  # the store's read-only folder: only pinned/signed files
    files: Mapping[str, str]  # relative path -> "sha256:<hex>"
    signature: VerifiedSignature | None
    # The BOM the publisher attached (OCI referrers), schema-checked and kept in the store; unsigned.
    upstream_bom: UpstreamBom | None = None
    # The verified evaluation attestation, when the entry requires one.
    evaluation: Evaluation | None = None
