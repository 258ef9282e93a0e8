"""OpenSSF model-signing verification for models fetched into the store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = [
    "CertificateSigner",
    "KeySigner",
    "Signer",
    "SigstoreSigner",
    "VerifiedSignature",
    "verify_model_signature",
]


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
    trusted_root: Path
    trusted_root_sha256: str | None = None


Signer = KeySigner | CertificateSigner | SigstoreSigner


@dataclass(frozen=True)
class VerifiedSignature:
    """What a valid signature vouches for."""

    signer: str  # the policy's signer name
    identity: str  # key fingerprint, certificate subject, or sigstore identity
    digests: Mapping[str, str]  # relative path -> "sha256:<hex>"


def verify_model_signature(
    signer: Signer, model_dir: Path, signature: Path, *, files: Mapping[str, str]
) -> VerifiedSignature:
    """Verify ``signature`` over ``model_dir`` and check it covers exactly ``files``.

    Raises:
        SignatureError: the signature is invalid, made by another signer, or does not cover every file
            in ``files`` with the same sha256 digest.
    """
    raise NotImplementedError
