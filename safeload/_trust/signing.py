"""OpenSSF model-signing verification for models fetched into the store.

A model signature (``model.sig``, a Sigstore bundle holding a DSSE envelope over an in-toto statement)
vouches for a list of ``(relative path, sha256)`` pairs. :func:`verify_model_signature` checks the
bundle cryptographically with the method the *policy* names for the signer (never one guessed from the
bundle), reads the signed per-file digests out of the verified payload, and compares them with the
digests the store computed while it copied the files. The files are not hashed a second time: with
model-signing's ``files`` serialization and sha256, each signed digest is the plain sha256 of the file,
the same value the store already holds, so verification costs the same for 1 KiB and 2 GiB models.

Coverage rules, strictest first:

* every file that will be handed to the loader (``files``) must be in the signature with the same
  digest; the signature file itself (``model.sig`` unless the caller names another) is exempt;
* every file in the signature must be in ``files``, unless the caller names it in ``optional`` (a signed
  file it deliberately does not fetch). A signed file that is absent means the model on disk is not the
  model that was signed (model-signing's own verifier refuses it too).

Verification never touches the network: sigstore bundles are checked against the trusted root file the
policy pins (by path, and by sha256 when ``trusted_root_sha256`` is set), using the transparency-log
inclusion proof and the signed timestamps carried inside the bundle.

Where this is stricter than model-signing 1.1's own verifier, on purpose:

* only model-signing >= 1.0 statements (``https://model_signing/signature/v1.0``) with ``files``
  serialization and sha256; the pre-1.0 format and its non-standard DSSE encoding are refused, as are
  shard manifests and other hashes (they cannot be compared with the store's whole-file sha256);
* exactly one DSSE signature; duplicate, absolute, ``..``, ``.`` or empty-segment resource names
  refused;
* certificate signers: the chain must be pinned (no fall-back to the system's web roots) and the leaf
  pinned by fingerprint or subject; a leaf that is not yet valid is refused. Like model-signing, the
  chain is validated at the leaf's notBefore because such bundles carry no trusted timestamp, so an
  expired leaf still verifies and revocation is not checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from safeload._trust.signers import CertificateSigner, KeySigner, Signer, SigstoreSigner, VerifiedSignature
from safeload.errors import SignatureError

__all__ = [
    "CertificateSigner",
    "KeySigner",
    "Signer",
    "SigstoreSigner",
    "VerifiedEnvelope",
    "VerifiedSignature",
    "check_signed_files",
    "dsse_signature",
    "in_toto_statement",
    "verify_envelope",
    "verify_model_signature",
    "verify_signature",
    "verify_signature_bytes",
]


# A model.sig is a few KiB; the cap keeps a hostile file from being read into memory whole.
_MAX_SIGNATURE_BYTES = 16 * 1024 * 1024
_MAX_TRUSTED_ROOT_BYTES = 16 * 1024 * 1024

_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
_CLIENT_TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"
_SIGNING_CONFIG = ("_store", "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev", "signing_config.v0.2.json")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SUPPORTED_CURVES: dict[str, hashes.HashAlgorithm] = {
    "secp256r1": hashes.SHA256(),
    "secp384r1": hashes.SHA384(),
    "secp521r1": hashes.SHA512(),
}
_MAX_LISTED = 10
_CLOCK_SKEW = timedelta(minutes=5)


def verify_model_signature(
    signer: Signer,
    model_dir: Path,
    signature: Path,
    *,
    files: Mapping[str, str],
    optional: Collection[str] = frozenset(),
    signature_name: str = "model.sig",
) -> VerifiedSignature:
    """Verify ``signature`` over ``model_dir`` and check it covers exactly ``files``.

    Args:
        signer: the policy's signer; its kind alone decides how the bundle is verified.
        model_dir: the folder the loader reads; ``files`` are relative to it.
        signature: the model-signing bundle, inside ``model_dir`` or anywhere else (a store blob).
        files: every relative path (POSIX form) that will be handed to the loader, mapped to the
            ``"sha256:<hex>"`` the store computed while copying it. The files are not re-read.
        optional: signed paths the caller deliberately does not fetch; without this, a signed file
            missing from ``files`` is refused.
        signature_name: the signature's path in the model repository. It cannot sign itself, so it is
            exempt from coverage if it appears in ``files``, as is ``signature``'s own relative path when
            it lies inside ``model_dir``.

    Returns:
        The signer's name, the identity that signed (``"sha256:<hex>"`` of the public key's DER for a
        key, the leaf's RFC 4514 subject for a certificate, the matched SAN for sigstore) and the
        signed digests.

    Raises:
        SignatureError: the signature is unreadable or invalid, was made by another key, chain,
            identity or issuer, is not a per-file sha256 model-signing manifest, or does not cover
            every file in ``files`` with the same sha256 digest; a signed file is missing from
            ``files``; the signer's own material (key, chain, trusted root) cannot be read or does not
            match its pinned hash; ``files`` holds a malformed digest.
    """
    pins = _normalise_pins(signer.name, files)
    verified = verify_signature(signer, signature)
    exempt = _exempt_paths(model_dir, signature) | {signature_name}
    _check_coverage(signer.name, verified.digests, pins, frozenset(optional), exempt)
    return verified


def verify_signature(signer: Signer, signature: Path) -> VerifiedSignature:
    """Verify the bundle at ``signature`` against ``signer`` and return what it vouches for.

    Nothing is compared with any file: this tells a caller which files a signature covers (say, to
    fetch the signed files of a model whose policy entry pins none) before it calls
    :func:`verify_model_signature` on the files it fetched.

    Raises:
        SignatureError: as :func:`verify_model_signature`, except for the coverage checks.
    """
    raw_signature = _read_capped(signature, _MAX_SIGNATURE_BYTES, what=f"signature {signature}")
    return verify_signature_bytes(signer, raw_signature, what=f"the signature {signature}")


def verify_signature_bytes(signer: Signer, raw_signature: bytes, *, what: str) -> VerifiedSignature:
    """:func:`verify_signature` over a bundle already read (at most 16 MiB); ``what`` names it in errors.

    Raises:
        SignatureError: as :func:`verify_signature`.
    """
    if len(raw_signature) > _MAX_SIGNATURE_BYTES:
        raise SignatureError(f"{what} is over the {_MAX_SIGNATURE_BYTES} bytes allowed")
    payload_type, payload, identity = verify_envelope(signer, raw_signature, what=what)
    try:
        signed = _signed_digests(signer.name, payload_type, payload)
    except SignatureError:
        raise
    except Exception as exc:  # as in verify_envelope: a hostile statement never escapes untyped
        raise SignatureError(f"{what} for signer {signer.name!r} could not be verified: {exc!r}") from exc
    return VerifiedSignature(signer=signer.name, identity=identity, digests=MappingProxyType(signed))


class VerifiedEnvelope(NamedTuple):
    """A DSSE envelope whose signature holds: its payload type, the payload (verified, not yet parsed)
    and the identity that signed it."""

    payload_type: str
    payload: bytes
    identity: str


def verify_envelope(signer: Signer, raw: bytes, *, what: str) -> VerifiedEnvelope:
    """Verify a Sigstore bundle's DSSE envelope with the method ``signer``'s kind names; returns the
    payload type, the payload (verified, not yet parsed) and the identity that signed.

    Raises:
        SignatureError: the bundle is malformed, or was not signed by ``signer``.
    """
    try:
        if isinstance(signer, KeySigner):
            return _verify_key_bundle(signer, raw)
        if isinstance(signer, CertificateSigner):
            return _verify_certificate_bundle(signer, raw)
        if isinstance(signer, SigstoreSigner):
            return _verify_sigstore_bundle(signer, raw)
        # pragma: no cover - the union is closed; a new kind must be added above
        raise SignatureError(f"unknown signer kind {type(signer).__name__} for signer {signer.name!r}")
    except SignatureError:
        raise
    except Exception as exc:
        # The checks name the failures they expect; whatever else a hostile bundle provokes in the
        # parsers and crypto libraries still refuses, never escapes as a foreign exception.
        raise SignatureError(f"{what} for signer {signer.name!r} could not be verified: {exc!r}") from exc


# --- inputs ---------------------------------------------------------------------------------------


def _normalise_pins(signer_name: str, files: Mapping[str, str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for rel, digest in files.items():
        value = digest.lower() if isinstance(digest, str) else ""
        if not (value.startswith("sha256:") and _HEX64.fullmatch(value[7:])):
            raise SignatureError(
                f"cannot check the signature from signer {signer_name!r}: the digest given for {rel!r} is "
                f"{digest!r}, expected 'sha256:' followed by 64 hex digits"
            )
        pins[rel] = value
    return pins


def _read_capped(path: Path, limit: int, *, what: str) -> bytes:
    try:
        # O_NONBLOCK: a FIFO planted in place of the file must not hang the load before fstat refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SignatureError(f"cannot read {what}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SignatureError(f"cannot read {what}: not a regular file")
        if info.st_size > limit:
            raise SignatureError(f"{what} is {info.st_size} bytes, more than the {limit} allowed")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read {what}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise SignatureError(f"{what} is more than the {limit} bytes allowed")
    return data


def _exempt_paths(model_dir: Path, signature: Path) -> frozenset[str]:
    try:
        rel = signature.resolve().relative_to(model_dir.resolve())
    except ValueError:
        return frozenset()
    return frozenset({rel.as_posix()})


def _sha256_pin(value: str, *, field: str) -> str:
    lowered = value.lower()
    if not (lowered.startswith("sha256:") and _HEX64.fullmatch(lowered[7:])):
        raise SignatureError(f"{field} is {value!r}: expected 'sha256:' followed by 64 hex digits")
    return lowered[7:]


# --- key and certificate bundles (protobuf-style Sigstore bundles without a transparency log) -----


@dataclass(frozen=True)
class _Envelope:
    payload_type: str
    payload: bytes
    signature: bytes


def _parse_bundle(signer_name: str, raw: bytes) -> tuple[dict[str, Any], _Envelope]:
    """Parse a key/certificate bundle far enough to verify it; nothing in it is trusted yet."""
    try:
        bundle = json.loads(raw)
        if not isinstance(bundle, dict):
            raise TypeError("the bundle is not a JSON object")
        if bundle.get("mediaType") != _BUNDLE_MEDIA_TYPE:
            raise TypeError(f"media type {bundle.get('mediaType')!r}, expected {_BUNDLE_MEDIA_TYPE!r}")
        material = bundle["verificationMaterial"]
        envelope = bundle["dsseEnvelope"]
        signatures = envelope["signatures"]
        if not isinstance(material, dict) or not isinstance(signatures, list) or len(signatures) != 1:
            raise TypeError("expected verification material and exactly one DSSE signature")
        parsed = _Envelope(
            payload_type=str(envelope["payloadType"]),
            payload=base64.b64decode(envelope["payload"], validate=True),
            signature=base64.b64decode(signatures[0]["sig"], validate=True),
        )
    except (ValueError, TypeError, KeyError, RecursionError, binascii.Error) as exc:
        raise SignatureError(
            f"the signature for signer {signer_name!r} is not a model-signing bundle ({exc}); "
            "re-create it with `model_signing sign`"
        ) from exc
    return material, parsed


def _pae(payload_type: str, payload: bytes) -> bytes:
    # DSSE v1 pre-authentication encoding: what the signature is computed over.
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _verify_ecdsa(
    signer_name: str, key: ec.EllipticCurvePublicKey, envelope: _Envelope, *, whose: str
) -> None:
    algorithm = _SUPPORTED_CURVES[key.curve.name]
    try:
        key.verify(envelope.signature, _pae(envelope.payload_type, envelope.payload), ec.ECDSA(algorithm))
    except InvalidSignature as exc:
        raise SignatureError(
            f"the signature does not verify with {whose} of signer {signer_name!r}: it was made with "
            "another key, or the signed manifest was altered"
        ) from exc


def _load_ec_public_key(signer: KeySigner) -> ec.EllipticCurvePublicKey:
    field = f"signers.{signer.name}.public_key"
    try:
        key = serialization.load_pem_public_key(signer.public_key.read_bytes())
    except OSError as exc:
        raise SignatureError(f"{field}: cannot read {signer.public_key}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{field}: {signer.public_key} is not a PEM public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _SUPPORTED_CURVES:
        raise SignatureError(
            f"{field}: {signer.public_key} must be an ECDSA P-256, P-384 or P-521 public key "
            "(the key types model-signing signs with)"
        )
    return key


def _verify_key_bundle(signer: KeySigner, raw: bytes) -> VerifiedEnvelope:
    key = _load_ec_public_key(signer)
    material, envelope = _parse_bundle(signer.name, raw)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    identity = f"sha256:{hashlib.sha256(der).hexdigest()}"
    if "x509CertificateChain" in material or "certificate" in material:
        raise SignatureError(
            f"signer {signer.name!r} is a key, but the signature carries a certificate: it was made with "
            "a certificate or sigstore; declare the signer with the matching kind"
        )
    # model-signing records a hint (sha256 of the key's PEM); used only to say which key signed.
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_key_material = material.get("publicKey")
    hint = public_key_material.get("hint") if isinstance(public_key_material, dict) else None
    if hint and hint != hashlib.sha256(pem).hexdigest():
        raise SignatureError(
            f"the signature was made with another key (key hint {hint}) than signer {signer.name!r}'s "
            f"public key {signer.public_key} ({identity}); check signers.{signer.name}.public_key"
        )
    _verify_ecdsa(signer.name, key, envelope, whose=f"the public key {signer.public_key}")
    return VerifiedEnvelope(envelope.payload_type, envelope.payload, identity)


def _load_chain(signer: CertificateSigner) -> list[x509.Certificate]:
    field = f"signers.{signer.name}.chain"
    if not signer.chain:
        raise SignatureError(
            f"{field} is empty: a certificate signer needs its CA chain pinned; safeload never falls "
            "back to the system's web roots"
        )
    certificates: list[x509.Certificate] = []
    for path in signer.chain:
        try:
            certificates.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            raise SignatureError(f"{field}: cannot read {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise SignatureError(f"{field}: {path} holds no PEM certificate ({exc})") from exc
    return certificates


def _verify_certificate_bundle(signer: CertificateSigner, raw: bytes) -> VerifiedEnvelope:
    from OpenSSL import crypto

    if signer.leaf_sha256 is None and signer.leaf_subject is None:
        raise SignatureError(
            f"signers.{signer.name}: set leaf_sha256 or leaf_subject; without them any certificate the "
            "CA ever issued could sign this model"
        )
    anchors = _load_chain(signer)
    material, envelope = _parse_bundle(signer.name, raw)
    try:
        chain_der = [
            base64.b64decode(c["rawBytes"], validate=True)
            for c in material["x509CertificateChain"]["certificates"]
        ]
        bundle_chain = [x509.load_der_x509_certificate(der) for der in chain_der]
        leaf = bundle_chain[0]
    except (KeyError, TypeError, IndexError, ValueError, binascii.Error) as exc:
        raise SignatureError(
            f"signer {signer.name!r} is a certificate signer, but the signature carries no readable "
            "certificate chain: it was made with a bare key or sigstore; declare the signer with the "
            "matching kind"
        ) from exc

    subject = leaf.subject.rfc4514_string()
    fingerprint = hashlib.sha256(chain_der[0]).hexdigest()
    if signer.leaf_sha256 is not None:
        expected = _sha256_pin(signer.leaf_sha256, field=f"signers.{signer.name}.leaf_sha256")
        if fingerprint != expected:
            raise SignatureError(
                f"the signing certificate ({subject}, sha256:{fingerprint}) is not the one pinned by "
                f"signers.{signer.name}.leaf_sha256 (sha256:{expected})"
            )
    if signer.leaf_subject is not None and subject != signer.leaf_subject:
        raise SignatureError(
            f"the signing certificate's subject is {subject!r}, but signers.{signer.name}.leaf_subject "
            f"expects {signer.leaf_subject!r}"
        )

    now = datetime.now(timezone.utc)
    if leaf.not_valid_before_utc > now + _CLOCK_SKEW:
        raise SignatureError(
            f"the signing certificate ({subject}) is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; a signature cannot predate its certificate"
        )
    # As model-signing does: the bundle has no trusted timestamp, so the chain is checked at the leaf's
    # notBefore (the earliest moment it could have signed). The leaf's own expiry is not enforced.
    store = crypto.X509Store()
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_time(leaf.not_valid_before_utc)
    context = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in bundle_chain[1:]],
    )
    try:
        context.verify_certificate()
    except crypto.X509StoreContextError as exc:
        raise SignatureError(
            f"the signing certificate ({subject}) does not chain to the CA pinned by "
            f"signers.{signer.name}.chain: {exc}"
        ) from exc
    _check_code_signing_usage(signer.name, leaf)

    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _SUPPORTED_CURVES:
        raise SignatureError(f"the signing certificate ({subject}) does not hold an ECDSA P-256/384/521 key")
    _verify_ecdsa(signer.name, key, envelope, whose=f"the certificate {subject}")
    return VerifiedEnvelope(envelope.payload_type, envelope.payload, subject)


def _check_code_signing_usage(signer_name: str, leaf: x509.Certificate) -> None:
    try:
        if leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return
    except x509.ExtensionNotFound:
        pass
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if x509.oid.ExtendedKeyUsageOID.CODE_SIGNING in usages:
            return
    except x509.ExtensionNotFound:
        pass
    raise SignatureError(
        f"the signing certificate for signer {signer_name!r} ({leaf.subject.rfc4514_string()}) is not "
        "allowed to sign: it has neither the digitalSignature key usage nor the codeSigning extended "
        "key usage"
    )


# --- sigstore keyless bundles ---------------------------------------------------------------------


def _client_trust_config_json(signer: SigstoreSigner) -> str:
    field = f"signers.{signer.name}.trusted_root"
    raw = _read_capped(signer.trusted_root, _MAX_TRUSTED_ROOT_BYTES, what=f"{field} ({signer.trusted_root})")
    if signer.trusted_root_sha256 is not None:
        expected = _sha256_pin(signer.trusted_root_sha256, field=f"signers.{signer.name}.trusted_root_sha256")
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected:
            raise SignatureError(
                f"{field}: {signer.trusted_root} has sha256:{actual}, but "
                f"signers.{signer.name}.trusted_root_sha256 pins sha256:{expected}; the trusted root "
                "changed since it was pinned: restore it or review and re-pin it"
            )
    try:
        document = json.loads(raw)
        media_type = document.get("mediaType") if isinstance(document, dict) else None
    except (ValueError, RecursionError) as exc:
        raise SignatureError(f"{field}: {signer.trusted_root} is not JSON ({exc})") from exc
    if media_type == _CLIENT_TRUST_CONFIG_MEDIA_TYPE:
        return raw.decode()
    if media_type == _TRUSTED_ROOT_MEDIA_TYPE:
        # Verification reads only the trusted root; sigstore's client trust config also needs a signing
        # config, so the one shipped with sigstore fills that slot. It is never used to reach a service.
        signing_config = json.loads(resources.files("sigstore").joinpath(*_SIGNING_CONFIG).read_bytes())
        return json.dumps(
            {
                "mediaType": _CLIENT_TRUST_CONFIG_MEDIA_TYPE,
                "trustedRoot": document,
                "signingConfig": signing_config,
            }
        )
    raise SignatureError(
        f"{field}: {signer.trusted_root} has media type {media_type!r}; expected a Sigstore trusted root "
        f"({_TRUSTED_ROOT_MEDIA_TYPE}) or client trust config ({_CLIENT_TRUST_CONFIG_MEDIA_TYPE})"
    )


def _verify_sigstore_bundle(signer: SigstoreSigner, raw: bytes) -> VerifiedEnvelope:
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle, ClientTrustConfig
    from sigstore.verify import Verifier, policy

    config_json = _client_trust_config_json(signer)
    try:
        trusted_root = ClientTrustConfig.from_json(config_json).trusted_root
        verifier = Verifier(trusted_root=trusted_root)
    except Exception as exc:  # any parse failure of the pinned root must refuse, whatever its type
        raise SignatureError(
            f"signers.{signer.name}.trusted_root: {signer.trusted_root} is not a usable Sigstore trusted "
            f"root ({exc})"
        ) from exc
    try:
        bundle = Bundle.from_json(raw)
    except Exception as exc:  # sigstore raises several types for malformed bundles
        raise SignatureError(
            f"the signature for signer {signer.name!r} is not a Sigstore bundle ({exc}); a sigstore signer "
            "expects a bundle made by `model_signing sign sigstore`"
        ) from exc
    identity_policy = policy.Identity(identity=signer.identity, issuer=signer.issuer)
    try:
        payload_type, payload = verifier.verify_dsse(bundle, identity_policy)
    except SigstoreError as exc:
        raise SignatureError(
            f"sigstore verification for signer {signer.name!r} failed: {exc}. Expected identity "
            f"{signer.identity!r} from issuer {signer.issuer!r}; check signers.{signer.name}.identity, "
            ".issuer and .trusted_root"
        ) from exc
    except Exception as exc:  # malformed certificates and log entries surface as assorted errors
        raise SignatureError(
            f"sigstore verification for signer {signer.name!r} failed on a malformed bundle: {exc!r}"
        ) from exc
    return VerifiedEnvelope(str(payload_type), bytes(payload), signer.identity)


# --- the signed manifest --------------------------------------------------------------------------


def in_toto_statement(
    payload_type: str, payload: bytes, refuse: Callable[[str], SignatureError]
) -> dict[str, Any]:
    """The in-toto Statement v1 a verified DSSE payload holds (its predicate type is the caller's to
    check); ``refuse`` makes the error for what is wrong.

    Raises:
        SignatureError: from ``refuse``: another payload type, not JSON, not an in-toto statement.
    """
    if payload_type != _IN_TOTO_PAYLOAD_TYPE:
        raise refuse(f"payload type {payload_type!r}, expected {_IN_TOTO_PAYLOAD_TYPE!r}")
    try:
        statement = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise refuse(f"not JSON ({exc})") from exc
    if not isinstance(statement, dict) or statement.get("_type") != _IN_TOTO_STATEMENT_TYPE:
        raise refuse(f"not an in-toto {_IN_TOTO_STATEMENT_TYPE} statement")
    return statement


def dsse_signature(payload_type: str, payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The ECDSA signature over DSSE's pre-authentication encoding, with the curve's hash, as
    :func:`verify_envelope` checks it.

    Raises:
        SignatureError: the key is not on P-256, P-384 or P-521.
    """
    algorithm = _SUPPORTED_CURVES.get(key.curve.name)
    if algorithm is None:
        raise SignatureError("the signing key must be an ECDSA P-256, P-384 or P-521 private key")
    return key.sign(_pae(payload_type, payload), ec.ECDSA(algorithm))


def _signed_digests(signer_name: str, payload_type: str, payload: bytes) -> dict[str, str]:
    """Read ``relative path -> "sha256:<hex>"`` from a verified in-toto statement, strictly."""

    def refuse(reason: str) -> SignatureError:
        return SignatureError(f"the statement signed by signer {signer_name!r} is unusable: {reason}")

    statement = in_toto_statement(payload_type, payload, refuse)
    if statement.get("predicateType") != _PREDICATE_TYPE:
        raise refuse(
            f"predicate type {statement.get('predicateType')!r}, expected {_PREDICATE_TYPE!r} "
            "(model-signing 1.0 or later); re-sign the model with a current model-signing"
        )
    subjects = statement.get("subject")
    predicate = statement.get("predicate")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(predicate, dict):
        raise refuse("expected exactly one subject and a predicate")
    subject_digest = subjects[0].get("digest") if isinstance(subjects[0], dict) else None
    root = subject_digest.get("sha256") if isinstance(subject_digest, dict) else None
    serialization_args = predicate.get("serialization")
    if not isinstance(serialization_args, dict):
        raise refuse("no serialization description")
    method = serialization_args.get("method")
    hash_type = serialization_args.get("hash_type")
    if method != "files" or hash_type != "sha256":
        raise refuse(
            f"it was made with {method!r} serialization and {hash_type!r} hashing; safeload compares "
            "whole-file sha256 digests, so re-sign with model-signing's default (files, sha256)"
        )
    entries = predicate.get("resources")
    if not isinstance(entries, list):
        raise refuse("no resource list")

    digests: dict[str, str] = {}
    root_hasher = hashlib.sha256()
    for entry in entries:
        if not isinstance(entry, dict):
            raise refuse("a resource is not an object")
        name, algorithm, digest = entry.get("name"), entry.get("algorithm"), entry.get("digest")
        if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise refuse(f"resource {entry!r} lacks a name or a 64-hex sha256 digest")
        if algorithm != "sha256":
            raise refuse(f"resource {name!r} uses {algorithm!r}, expected sha256")
        if name in digests:
            raise refuse(f"resource {name!r} is listed twice")
        _check_relative(name, refuse)
        digests[name] = f"sha256:{digest}"
        root_hasher.update(bytes.fromhex(digest))
    # The subject digest is what other documents cite; a statement whose resources disagree with it is
    # inconsistent and model-signing refuses it as well.
    if root != root_hasher.hexdigest():
        raise refuse("the subject digest does not match the listed resources")
    return digests


def _check_relative(name: str, refuse: Callable[[str], SignatureError]) -> None:
    # String checks rather than pathlib: a 5000-file manifest would otherwise spend most of its time here.
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts):
        raise refuse(f"resource name {name!r} is not a plain relative path")


def check_signed_files(
    signer_name: str,
    signed: Mapping[str, str],
    files: Mapping[str, str],
    *,
    optional: Collection[str] = frozenset(),
    exempt: Collection[str] = frozenset(),
) -> None:
    """The coverage rule of :func:`verify_model_signature` for a signature already verified: every file
    of ``files`` is signed with the same digest, and every signed file is in ``files`` unless it is
    ``optional`` (deliberately not fetched) or ``exempt`` (the signature's own path).

    Raises:
        SignatureError: a file is unsigned or differs from what was signed, a signed file is missing,
            or a digest of ``files`` is malformed.
    """
    pins = _normalise_pins(signer_name, files)
    _check_coverage(signer_name, signed, pins, frozenset(optional), frozenset(exempt))


def _check_coverage(
    signer_name: str,
    signed: Mapping[str, str],
    pins: Mapping[str, str],
    optional: frozenset[str],
    exempt: frozenset[str],
) -> None:
    uncovered = sorted(p for p in pins if p not in signed and p not in exempt)
    differing = sorted(p for p in pins if p in signed and p not in exempt and signed[p] != pins[p])
    missing = sorted(p for p in signed if p not in pins and p not in optional and p not in exempt)
    problems: list[str] = []
    if differing:
        problems.append(
            "these files differ from what was signed (store digest vs signed digest): "
            + _listing(f"{p!r} {pins[p]} vs {signed[p]}" for p in differing)
            + "; the bytes are not the ones the signer vouched for: check the pins in trust.toml against "
            "the publisher's release"
        )
    if uncovered:
        problems.append(
            "these files would be loaded but the signature does not cover them: "
            + _listing(repr(p) for p in uncovered)
            + "; drop them from the model's files, or have the publisher re-sign the model with them"
        )
    if missing:
        problems.append(
            "these signed files are not among the model's files: "
            + _listing(repr(p) for p in missing)
            + "; the model is incomplete relative to what was signed: pin them in the model's files"
        )
    if problems:
        raise SignatureError(
            f"the signature from signer {signer_name!r} does not match the model: " + "; ".join(problems)
        )


def _listing(items: Iterable[str]) -> str:
    shown = list(items)
    text = ", ".join(shown[:_MAX_LISTED])
    if len(shown) > _MAX_LISTED:
        text += f" and {len(shown) - _MAX_LISTED} more"
    return text
