"""Keys, certificate chains and model-signing signatures made in tests, and ``files`` maps as the store
computes them (plain hashlib over each file's bytes)."""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import sigstore
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from model_signing import hashing, signing

SIGNATURE_NAME = "model.sig"

# Third-party signatures kept in the repository as data (origin and licence in their README).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "model-signing"

# Identities recorded in the fixtures' README.
FIXTURE_SIGSTORE_IDENTITY = "stefanb@us.ibm.com"
FIXTURE_SIGSTORE_ISSUER = "https://sigstore.verify.ibm.com/oauth2"
FIXTURE_SIGNED = ("signme-1", "signme-2")

_SIGSTORE_PROD = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
SIGSTORE_TRUSTED_ROOT = _SIGSTORE_PROD / "trusted_root.json"
SIGSTORE_SIGNING_CONFIG = _SIGSTORE_PROD / "signing_config.v0.2.json"


def fixtures() -> Path:
    """The third-party signature fixtures; a missing folder fails the test rather than skipping it."""
    assert FIXTURES.is_dir(), f"signature fixtures missing at {FIXTURES}: the checkout is incomplete"
    return FIXTURES


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def files_map(model_dir: Path, names: tuple[str, ...] | list[str] | None = None) -> dict[str, str]:
    """``relative path -> "sha256:<hex>"`` for ``names`` (default: every file except the signature)."""
    if names is None:
        names = sorted(
            p.relative_to(model_dir).as_posix()
            for p in model_dir.rglob("*")
            if p.is_file() and p.name != SIGNATURE_NAME
        )
    return {name: sha256_file(model_dir / name) for name in names}


def write_tiny_model(model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 4}))
    (model_dir / "model.safetensors").write_bytes(
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(64))
    )
    (model_dir / "tokenizer").mkdir(exist_ok=True)
    (model_dir / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    return model_dir


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key: ec.EllipticCurvePrivateKey


def generate_key(directory: Path, stem: str = "signing", curve: ec.EllipticCurve | None = None) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP256R1())
    private = directory / f"{stem}.key"
    public = directory / f"{stem}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public, key)


def key_identity(pair: KeyPair) -> str:
    der = pair.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"sha256:{hashlib.sha256(der).hexdigest()}"


@dataclass(frozen=True)
class Chain:
    root: Path
    intermediate: Path
    leaf: Path
    leaf_key: Path
    leaf_subject: str
    leaf_sha256: str
    intermediate_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "safeload tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    if subject != issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(
    directory: Path, *, leaf_cn: str = "acme release signing", ca_cn: str = "acme root CA"
) -> Chain:
    """A root CA, an intermediate and a code-signing leaf, written as PEM files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=365)
    root_key = ec.generate_private_key(ec.SECP256R1())
    int_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root_name, int_name, leaf_name = _name(ca_cn), _name(f"{ca_cn} intermediate"), _name(leaf_cn)
    root = _certificate(
        root_name, root_name, root_key.public_key(), root_key, ca=True, not_before=start, not_after=end
    )
    inter = _certificate(
        int_name, root_name, int_key.public_key(), root_key, ca=True, not_before=start, not_after=end
    )
    leaf = _certificate(
        leaf_name, int_name, leaf_key.public_key(), int_key, ca=False, not_before=now, not_after=end
    )

    def write(name: str, cert: x509.Certificate) -> Path:
        path = directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    return Chain(
        root=write("root.pem", root),
        intermediate=write("intermediate.pem", inter),
        leaf=write("leaf.pem", leaf),
        leaf_key=_write_key(directory / "leaf.key", leaf_key),
        leaf_subject=leaf.subject.rfc4514_string(),
        leaf_sha256=f"sha256:{leaf.fingerprint(hashes.SHA256()).hex()}",
        intermediate_key=_write_key(directory / "intermediate.key", int_key),
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def issue_sibling_leaf(
    chain: Chain, directory: Path, *, leaf_cn: str, not_before: datetime.datetime | None = None
) -> Chain:
    """Another code-signing leaf from the same intermediate: same CA, different signer."""
    directory.mkdir(parents=True, exist_ok=True)
    int_key = serialization.load_pem_private_key(chain.intermediate_key.read_bytes(), None)
    assert isinstance(int_key, ec.EllipticCurvePrivateKey)
    inter = x509.load_pem_x509_certificate(chain.intermediate.read_bytes())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = not_before or datetime.datetime.now(datetime.timezone.utc)
    leaf = _certificate(
        _name(leaf_cn),
        inter.subject,
        leaf_key.public_key(),
        int_key,
        ca=False,
        not_before=now,
        not_after=now + datetime.timedelta(days=365),
    )
    leaf_path = directory / "leaf.pem"
    leaf_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return Chain(
        root=chain.root,
        intermediate=chain.intermediate,
        leaf=leaf_path,
        leaf_key=_write_key(directory / "leaf.key", leaf_key),
        leaf_subject=leaf.subject.rfc4514_string(),
        leaf_sha256=f"sha256:{leaf.fingerprint(hashes.SHA256()).hex()}",
        intermediate_key=chain.intermediate_key,
    )


def _hashing_config(ignore: tuple[str, ...]) -> hashing.Config:
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME, *ignore])


def sign_with_key(model_dir: Path, private_key: Path, *, ignore: tuple[str, ...] = ()) -> Path:
    """Sign ``model_dir`` with model-signing's key method; the signature lands in ``model_dir/model.sig``."""
    signature = model_dir / SIGNATURE_NAME
    config = signing.Config().use_elliptic_key_signer(private_key=private_key)
    config.set_hashing_config(_hashing_config(ignore)).sign(model_dir, signature)
    return signature


def sign_with_certificate(model_dir: Path, chain: Chain, *, ignore: tuple[str, ...] = ()) -> Path:
    """Sign ``model_dir`` with model-signing's certificate method, shipping leaf and intermediate."""
    signature = model_dir / SIGNATURE_NAME
    config = signing.Config().use_certificate_signer(
        private_key=chain.leaf_key, signing_certificate=chain.leaf, certificate_chain=[chain.intermediate]
    )
    config.set_hashing_config(_hashing_config(ignore)).sign(model_dir, signature)
    return signature


def client_trust_config(destination: Path) -> Path:
    """sigstore's production trusted root wrapped as a client trust config, the form model-signing reads."""
    document = {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": json.loads(SIGSTORE_TRUSTED_ROOT.read_bytes()),
        "signingConfig": json.loads(SIGSTORE_SIGNING_CONFIG.read_bytes()),
    }
    destination.write_text(json.dumps(document))
    return destination
