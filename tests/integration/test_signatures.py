"""Real third-party model-signing signatures (tests/fixtures/model-signing), verified through safeload.

The fixtures were signed by the model-transparency maintainers with model-signing 1.1.0: a Sigstore
keyless signature from the production instance, a certificate-chain signature and an ECDSA key
signature. ``ignore-me`` sits in each folder unsigned. Sigstore verification runs offline against the
trusted root that ships inside the ``sigstore`` package.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from model_signing import hashing

from safeload._trust.signing import (
    CertificateSigner,
    KeySigner,
    SigstoreSigner,
    VerifiedSignature,
    verify_model_signature,
)
from safeload.errors import SignatureError
from tests.helpers.signing import (
    FIXTURE_SIGNED,
    FIXTURE_SIGSTORE_IDENTITY,
    FIXTURE_SIGSTORE_ISSUER,
    SIGSTORE_TRUSTED_ROOT,
    client_trust_config,
    files_map,
    fixtures,
    generate_key,
    sign_with_key,
    write_tiny_model,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fx() -> Path:
    return fixtures()


@pytest.fixture
def trusted_root(tmp_path: Path) -> Path:
    """The policy's pinned copy of the Sigstore production trusted root."""
    return Path(shutil.copy(SIGSTORE_TRUSTED_ROOT, tmp_path / "trusted_root.json"))


def _sha256(path: Path) -> str:
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def _sigstore_signer(root: Path, **overrides: str) -> SigstoreSigner:
    fields = {
        "identity": FIXTURE_SIGSTORE_IDENTITY,
        "issuer": FIXTURE_SIGSTORE_ISSUER,
        "trusted_root_sha256": _sha256(root),
    }
    fields.update(overrides)
    return SigstoreSigner(name="ibm", trusted_root=root, **fields)


def _verify(
    signer: KeySigner | CertificateSigner | SigstoreSigner, folder: Path, files: dict[str, str] | None = None
) -> VerifiedSignature:
    if files is None:
        files = files_map(folder, list(FIXTURE_SIGNED))
    return verify_model_signature(signer, folder, folder / "model.sig", files=files)


def _leaf_fingerprint(fx: Path) -> str:
    cert = x509.load_pem_x509_certificate((fx / "keys" / "signing-key-cert.pem").read_bytes())
    return f"sha256:{hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()}"


# --- the three real signatures verify ------------------------------------------------------------


def test_fixture_sigstore_signature_verifies_offline(fx: Path, trusted_root: Path) -> None:
    folder = fx / "v1.1.0-sigstore"
    verified = _verify(_sigstore_signer(trusted_root), folder)
    assert verified.identity == FIXTURE_SIGSTORE_IDENTITY
    assert verified.signer == "ibm"
    assert dict(verified.digests) == files_map(folder, list(FIXTURE_SIGNED))


def test_fixture_sigstore_accepts_a_client_trust_config(fx: Path, tmp_path: Path) -> None:
    config = client_trust_config(tmp_path / "trust_config.json")
    verified = _verify(_sigstore_signer(config), fx / "v1.1.0-sigstore")
    assert verified.identity == FIXTURE_SIGSTORE_IDENTITY


def test_fixture_sigstore_without_root_hash_pin_still_verifies(fx: Path, trusted_root: Path) -> None:
    signer = SigstoreSigner("ibm", FIXTURE_SIGSTORE_IDENTITY, FIXTURE_SIGSTORE_ISSUER, trusted_root)
    _verify(signer, fx / "v1.1.0-sigstore")


def test_fixture_certificate_signature_verifies(fx: Path) -> None:
    folder = fx / "v1.1.0-certificate"
    signer = CertificateSigner("ibm-ca", (fx / "keys" / "ca-cert.pem",), leaf_sha256=_leaf_fingerprint(fx))
    verified = _verify(signer, folder)
    assert verified.identity == "CN=intermediate-ca"
    assert dict(verified.digests) == files_map(folder, list(FIXTURE_SIGNED))
    with_intermediate = CertificateSigner(
        "ibm-ca",
        (fx / "keys" / "ca-cert.pem", fx / "keys" / "int-ca-cert.pem"),
        leaf_subject="CN=intermediate-ca",
    )
    _verify(with_intermediate, folder)


def test_fixture_key_signature_verifies(fx: Path) -> None:
    folder = fx / "v1.1.0-elliptic-key"
    public = fx / "keys" / "signing-key-pub.pem"
    verified = _verify(KeySigner("ibm-key", public), folder)
    der = serialization.load_pem_public_key(public.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verified.identity == f"sha256:{hashlib.sha256(der).hexdigest()}"


# --- and refuse everything else ------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["v1.1.0-sigstore", "v1.1.0-certificate", "v1.1.0-elliptic-key"])
def test_fixture_unsigned_ignore_me_is_refused_when_loaded(fx: Path, trusted_root: Path, folder: str) -> None:
    signers = {
        "v1.1.0-sigstore": _sigstore_signer(trusted_root),
        "v1.1.0-certificate": CertificateSigner(
            "c", (fx / "keys" / "ca-cert.pem",), leaf_sha256=_leaf_fingerprint(fx)
        ),
        "v1.1.0-elliptic-key": KeySigner("k", fx / "keys" / "signing-key-pub.pem"),
    }
    files = files_map(fx / folder, [*FIXTURE_SIGNED, "ignore-me"])
    with pytest.raises(SignatureError, match=r"does not cover them: 'ignore-me'"):
        _verify(signers[folder], fx / folder, files=files)


def test_sigstore_wrong_identity_names_both(fx: Path, trusted_root: Path) -> None:
    signer = _sigstore_signer(trusted_root, identity="release@acme.example")
    with pytest.raises(SignatureError) as info:
        _verify(signer, fx / "v1.1.0-sigstore")
    assert "release@acme.example" in str(info.value)
    assert FIXTURE_SIGSTORE_IDENTITY in str(info.value)


def test_sigstore_wrong_issuer_names_both(fx: Path, trusted_root: Path) -> None:
    signer = _sigstore_signer(trusted_root, issuer="https://accounts.google.com")
    with pytest.raises(SignatureError) as info:
        _verify(signer, fx / "v1.1.0-sigstore")
    assert "https://accounts.google.com" in str(info.value)
    assert FIXTURE_SIGSTORE_ISSUER in str(info.value)


def test_sigstore_trusted_root_hash_mismatch_is_refused(fx: Path, trusted_root: Path) -> None:
    signer = _sigstore_signer(trusted_root, trusted_root_sha256="sha256:" + "0" * 64)
    with pytest.raises(SignatureError, match="trusted_root_sha256"):
        _verify(signer, fx / "v1.1.0-sigstore")


def test_sigstore_edited_trusted_root_is_refused_by_its_pin(fx: Path, trusted_root: Path) -> None:
    signer = _sigstore_signer(trusted_root)  # pinned before the edit
    trusted_root.write_bytes(trusted_root.read_bytes().replace(b"\n", b"\n ", 1))
    with pytest.raises(SignatureError, match="changed since it was pinned"):
        _verify(signer, fx / "v1.1.0-sigstore")


def test_sigstore_other_instance_root_is_refused(fx: Path, tmp_path: Path) -> None:
    staging = (
        SIGSTORE_TRUSTED_ROOT.parent.parent / "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev" / "trusted_root.json"
    )
    root = Path(shutil.copy(staging, tmp_path / "staging_root.json"))
    with pytest.raises(SignatureError, match="sigstore verification"):
        _verify(_sigstore_signer(root), fx / "v1.1.0-sigstore")


def test_sigstore_not_a_trusted_root_is_refused(fx: Path, tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text(json.dumps({"mediaType": "application/json", "tlogs": []}))
    with pytest.raises(SignatureError, match="media type"):
        _verify(_sigstore_signer(root), fx / "v1.1.0-sigstore")


def test_sigstore_tampered_file_is_refused(fx: Path, trusted_root: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(fx / "v1.1.0-sigstore", tmp_path / "model"))
    (folder / "signme-1").chmod(0o644)
    (folder / "signme-1").write_bytes(b"evil\n")
    with pytest.raises(SignatureError, match="signme-1"):
        _verify(_sigstore_signer(trusted_root), folder)


def test_sigstore_truncated_bundle_is_refused(fx: Path, trusted_root: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(fx / "v1.1.0-sigstore", tmp_path / "model"))
    sig = folder / "model.sig"
    sig.chmod(0o644)
    sig.write_bytes(sig.read_bytes()[:4000])
    with pytest.raises(SignatureError, match="not a Sigstore bundle"):
        _verify(_sigstore_signer(trusted_root), folder)


def test_signature_kind_comes_from_the_policy_not_the_bundle(fx: Path, trusted_root: Path) -> None:
    key = KeySigner("k", fx / "keys" / "signing-key-pub.pem")
    with pytest.raises(SignatureError):
        _verify(key, fx / "v1.1.0-sigstore")
    with pytest.raises(SignatureError, match="not a Sigstore bundle"):
        _verify(_sigstore_signer(trusted_root), fx / "v1.1.0-elliptic-key")
    cert = CertificateSigner("c", (fx / "keys" / "ca-cert.pem",), leaf_sha256=_leaf_fingerprint(fx))
    with pytest.raises(SignatureError, match="no readable certificate chain"):
        _verify(cert, fx / "v1.1.0-elliptic-key")


def test_fixture_key_signature_refuses_another_key(fx: Path, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "keys")
    with pytest.raises(SignatureError, match="another key"):
        _verify(KeySigner("k", other.public), fx / "v1.1.0-elliptic-key")


def test_fixture_certificate_refuses_a_foreign_root(fx: Path, tmp_path: Path) -> None:
    from tests.helpers.signing import make_chain

    foreign = make_chain(tmp_path / "pki")
    signer = CertificateSigner("c", (foreign.root,), leaf_sha256=_leaf_fingerprint(fx))
    with pytest.raises(SignatureError, match="does not chain"):
        _verify(signer, fx / "v1.1.0-certificate")


# --- no network, and no second pass over the bytes -----------------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    # urllib3 binds a probe socket to ::1 at import; only lookups and outbound traffic count.
    OUTBOUND = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                "socket.gethostbyaddr", "socket.getnameinfo", "socket.sendto", "socket.sendmsg",
                "urllib.Request", "http.client.connect"}
    attempts = []
    def hook(event, args):
        if event in OUTBOUND:
            attempts.append(event)
    sys.addaudithook(hook)
    from safeload._trust.signing import SigstoreSigner, verify_model_signature
    folder, root, identity, issuer, files = sys.argv[1:6]
    signer = SigstoreSigner("ibm", identity, issuer, Path(root))
    model = Path(folder)
    verified = verify_model_signature(signer, model, model / "model.sig", files=json.loads(files))
    print(json.dumps({"identity": verified.identity, "attempts": attempts}))
    """
)


@pytest.mark.slow  # a fresh interpreter importing safeload (and with it torch)
def test_sigstore_verification_runs_without_network(fx: Path, trusted_root: Path) -> None:
    """In a network namespace with no interfaces, and with no socket even attempted."""
    folder = fx / "v1.1.0-sigstore"
    files = json.dumps(files_map(folder, list(FIXTURE_SIGNED)))
    argv = [sys.executable, "-c", _OFFLINE_SCRIPT, str(folder), str(trusted_root)]
    argv += [FIXTURE_SIGSTORE_IDENTITY, FIXTURE_SIGSTORE_ISSUER, files]
    jail = ["bwrap", "--unshare-net", "--dev-bind", "/", "/", "--chdir", str(REPO), "--"]
    done = subprocess.run(jail + argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"identity": FIXTURE_SIGSTORE_IDENTITY, "attempts": []}


def test_store_digests_are_model_signing_digests(tmp_path: Path) -> None:
    """Verification trusts the store's hashlib digests; they must be what model-signing signs."""
    model = write_tiny_model(tmp_path / "model")
    manifest = hashing.Config().hash(model)
    signed = {rd.identifier: f"sha256:{rd.digest.digest_hex}" for rd in manifest.resource_descriptors()}
    assert signed == files_map(model)
    key = generate_key(tmp_path / "keys")
    sign_with_key(model, key.private)
    verified = verify_model_signature(
        KeySigner("k", key.public), model, model / "model.sig", files=files_map(model)
    )
    assert dict(verified.digests) == signed


# --- end to end: a policy, a directory registry, fetch_model -------------------------------------


def _policy(
    tmp_path: Path, registry: Path, models: dict[str, dict[str, object]], signers: dict[str, object]
) -> Path:
    from tests.helpers.trust import write_policy

    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": registry}},
        models=models,
        signers=signers,  # type: ignore[arg-type]
    )


def test_fetch_model_verifies_the_real_sigstore_signature(
    fx: Path, trusted_root: Path, tmp_path: Path
) -> None:
    """Signer only, no file pins: exactly the signed files reach the folder; ignore-me stays out."""
    from safeload._trust.resolve import fetch_model

    signers = {
        "ibm": {
            "kind": "sigstore",
            "identity": FIXTURE_SIGSTORE_IDENTITY,
            "issuer": FIXTURE_SIGSTORE_ISSUER,
            "trusted_root": trusted_root,
            "trusted_root_sha256": _sha256(trusted_root),
        }
    }
    models = {"ibm/demo": {"registry": "local", "repo": "v1.1.0-sigstore", "signer": "ibm"}}
    fetched = fetch_model("ibm/demo", policy=_policy(tmp_path, fx, models, signers))
    assert fetched.signature is not None
    assert fetched.signature.identity == FIXTURE_SIGSTORE_IDENTITY
    assert sorted(p.name for p in fetched.folder.iterdir()) == sorted(FIXTURE_SIGNED)
    assert dict(fetched.files) == files_map(fx / "v1.1.0-sigstore", list(FIXTURE_SIGNED))


def _signed_repo(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    registry = tmp_path / "registry"
    model = write_tiny_model(registry / "acme" / "tiny")
    key = generate_key(tmp_path / "keys")
    sign_with_key(model, key.private)
    return registry, key.public, files_map(model)


def test_fetch_model_with_pins_and_a_key_signer(tmp_path: Path) -> None:
    from safeload._trust.resolve import fetch_model

    registry, public, pins = _signed_repo(tmp_path)
    models = {"acme/tiny": {"registry": "local", "repo": "acme/tiny", "signer": "acme", "files": pins}}
    policy = _policy(tmp_path, registry, models, {"acme": {"kind": "key", "public_key": public}})
    fetched = fetch_model("acme/tiny", policy=policy)
    assert fetched.signature is not None
    assert fetched.signature.identity.startswith("sha256:")
    assert dict(fetched.files) == pins


def test_fetch_model_refuses_a_pinned_file_the_signature_does_not_cover(tmp_path: Path) -> None:
    from safeload._trust.resolve import fetch_model

    registry, public, pins = _signed_repo(tmp_path)
    extra = registry / "acme" / "tiny" / "modeling_evil.py"
    extra.write_text("import os\n")
    pins["modeling_evil.py"] = f"sha256:{hashlib.sha256(extra.read_bytes()).hexdigest()}"
    models = {"acme/tiny": {"registry": "local", "repo": "acme/tiny", "signer": "acme", "files": pins}}
    policy = _policy(tmp_path, registry, models, {"acme": {"kind": "key", "public_key": public}})
    with pytest.raises(SignatureError, match="modeling_evil"):
        fetch_model("acme/tiny", policy=policy)


def test_fetch_model_refuses_a_signature_over_other_bytes_than_the_pins(tmp_path: Path) -> None:
    """The publisher signed one version; the policy pins (and the registry serves) another."""
    from safeload._trust.resolve import fetch_model

    registry, public, _ = _signed_repo(tmp_path)
    config = registry / "acme" / "tiny" / "config.json"
    config.write_text(json.dumps({"model_type": "tiny", "hidden_size": 8}))
    pins = files_map(registry / "acme" / "tiny")
    models = {"acme/tiny": {"registry": "local", "repo": "acme/tiny", "signer": "acme", "files": pins}}
    policy = _policy(tmp_path, registry, models, {"acme": {"kind": "key", "public_key": public}})
    with pytest.raises(SignatureError, match=r"config\.json"):
        fetch_model("acme/tiny", policy=policy)
