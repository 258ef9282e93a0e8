"""Real third-party signatures (tests/fixtures/model-signing) through trust.toml and fetch_model.

Each fixture folder is served by a ``directory`` registry; the policy pins nothing, so the signature
alone decides which files reach the model folder (``ignore-me`` must not).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from safeload._trust.resolve import fetch_model
from safeload.errors import SignatureError
from safeload.policy import load_policy
from tests.helpers.signing import (
    FIXTURE_SIGNED,
    FIXTURE_SIGSTORE_IDENTITY,
    FIXTURE_SIGSTORE_ISSUER,
    SIGSTORE_TRUSTED_ROOT,
    fixtures,
)
from tests.helpers.trust import write_policy


def _leaf_sha256(fx: Path) -> str:
    cert = x509.load_pem_x509_certificate((fx / "keys" / "signing-key-cert.pem").read_bytes())
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _signers(fx: Path, root: Path) -> dict[str, dict[str, object]]:
    return {
        "ibm-sigstore": {
            "kind": "sigstore",
            "identity": FIXTURE_SIGSTORE_IDENTITY,
            "issuer": FIXTURE_SIGSTORE_ISSUER,
            "trusted_root": str(root),
            "trusted_root_sha256": "sha256:" + hashlib.sha256(root.read_bytes()).hexdigest(),
        },
        "ibm-cert": {
            "kind": "certificate",
            "chain": [str(fx / "keys/ca-cert.pem")],
            "leaf_sha256": _leaf_sha256(fx),
        },
        "ibm-key": {"kind": "key", "public_key": str(fx / "keys/signing-key-pub.pem")},
        "wrong-identity": {
            "kind": "sigstore",
            "identity": "someone-else@example.com",
            "issuer": FIXTURE_SIGSTORE_ISSUER,
            "trusted_root": str(root),
        },
    }


@pytest.mark.parametrize(
    ("folder", "signer", "identity"),
    [
        ("v1.1.0-sigstore", "ibm-sigstore", FIXTURE_SIGSTORE_IDENTITY),
        ("v1.1.0-certificate", "ibm-cert", None),
        ("v1.1.0-elliptic-key", "ibm-key", None),
    ],
)
def test_third_party_signature_admits_exactly_the_signed_files(
    tmp_path: Path, folder: str, signer: str, identity: str | None
) -> None:
    fx = fixtures()
    root = Path(shutil.copy(SIGSTORE_TRUSTED_ROOT, tmp_path / "trusted_root.json"))
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"fixtures": {"kind": "directory", "path": str(fx)}},
        signers=_signers(fx, root),
        models={"ibm/model": {"registry": "fixtures", "repo": folder, "signer": signer}},
    )
    got = fetch_model("ibm/model", policy=load_policy(policy), progress=False)
    assert sorted(p.name for p in got.folder.iterdir()) == sorted(
        FIXTURE_SIGNED
    )  # not ignore-me, not model.sig
    assert got.signature is not None and got.signature.signer == signer
    if identity is not None:
        assert got.signature.identity == identity
    for name in FIXTURE_SIGNED:
        assert (got.folder / name).read_bytes() == (fx / folder / name).read_bytes()


def test_third_party_sigstore_with_the_wrong_identity_is_refused(tmp_path: Path) -> None:
    fx = fixtures()
    root = Path(shutil.copy(SIGSTORE_TRUSTED_ROOT, tmp_path / "trusted_root.json"))
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"fixtures": {"kind": "directory", "path": str(fx)}},
        signers=_signers(fx, root),
        models={"ibm/model": {"registry": "fixtures", "repo": "v1.1.0-sigstore", "signer": "wrong-identity"}},
    )
    with pytest.raises(SignatureError):
        fetch_model("ibm/model", policy=load_policy(policy), progress=False)
    assert not (tmp_path / "store/models/fixtures").exists() or not any(
        (tmp_path / "store/models/fixtures").rglob("signme-1")
    )
