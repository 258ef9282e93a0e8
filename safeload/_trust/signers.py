"""The signer kinds a policy names and what a verified signature vouches for: values only.

Kept apart from ``safeload._trust.signing`` so that parsing a policy and resolving a model already in the
store do not import the cryptography stack; verification imports it when a signature is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateSigner", "KeySigner", "Signer", "SigstoreSigner", "VerifiedSignature"]


@dataclass(frozen=True)
class KeySigner:
    """``kind = "key"``: an ECDSA public key (PEM)."""

    name: str
    public_key: Path


@dataclass(frozen=True)
class CertificateSigner:
    """``kind = "certificate"``: a pinned certificate chain and the expected leaf."""

    name: str
    chain: tuple[Path, ...]
    leaf_sha256: str | None = None  # fingerprint of the signing certificate, "sha256:<hex>"
    leaf_subject: str | None = None


@dataclass(frozen=True)
class SigstoreSigner:
    """``kind = "sigstore"``: keyless, verified offline against a trusted root pinned by hash."""

    name: str
    identity: str
    issuer: str
    trusted_root: Path  # a Sigstore trusted_root.json, or a client trust config that embeds one
    trusted_root_sha256: str | None = None  # "sha256:<hex>" of the file's bytes


Signer = KeySigner | CertificateSigner | SigstoreSigner


@dataclass(frozen=True)
class VerifiedSignature:
    """What a valid signature vouches for."""

    signer: str  # the policy's signer name
    identity: str  # key fingerprint, certificate subject, or sigstore identity
    digests: Mapping[str, str]  # relative path -> "sha256:<hex>"
