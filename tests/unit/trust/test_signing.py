"""safeload._trust.signing with keys and certificate chains generated here and signatures made by
model-signing."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeload._trust.signing import CertificateSigner, KeySigner, verify_model_signature, verify_signature
from safeload.errors import SignatureError
from tests.helpers.signing import (
    KeyPair,
    files_map,
    generate_key,
    issue_sibling_leaf,
    key_identity,
    make_chain,
    sign_with_certificate,
    sign_with_key,
    write_tiny_model,
)

TINY_FILES = ("config.json", "model.safetensors", "tokenizer/vocab.txt")


@pytest.fixture
def key(tmp_path: Path) -> KeyPair:
    return generate_key(tmp_path / "keys")


@pytest.fixture
def signed_model(tmp_path: Path, key: KeyPair) -> Path:
    model = write_tiny_model(tmp_path / "model")
    sign_with_key(model, key.private)
    return model


def _verify_key(model: Path, key: KeyPair, files: dict[str, str], **kwargs: Any) -> Any:
    return verify_model_signature(
        KeySigner("acme", key.public), model, model / "model.sig", files=files, **kwargs
    )


# --- key ------------------------------------------------------------------------------------------


def test_key_signature_verifies_and_reports_signed_digests(signed_model: Path, key: KeyPair) -> None:
    files = files_map(signed_model)
    assert sorted(files) == sorted(TINY_FILES)
    verified = _verify_key(signed_model, key, files)
    assert verified.signer == "acme"
    assert verified.identity == key_identity(key)
    assert dict(verified.digests) == files


def test_signature_file_listed_in_files_is_exempt(signed_model: Path, key: KeyPair) -> None:
    files = files_map(signed_model, [*TINY_FILES, "model.sig"])
    assert "model.sig" not in _verify_key(signed_model, key, files).digests


def test_signature_kept_outside_the_folder_is_still_exempt_by_name(
    tmp_path: Path, signed_model: Path, key: KeyPair
) -> None:
    """The store keeps the signature as a blob; a policy that pins model.sig still verifies."""
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    (signed_model / "model.sig").rename(blob)
    (signed_model / "model.sig").write_bytes(blob.read_bytes())
    files = files_map(signed_model, [*TINY_FILES, "model.sig"])
    signer = KeySigner("acme", key.public)
    verify_model_signature(signer, signed_model, blob, files=files)
    (signed_model / "model.sig").rename(signed_model / "release.sig")
    files = files_map(signed_model, [*TINY_FILES, "release.sig"])
    with pytest.raises(SignatureError, match=r"does not cover them: 'release\.sig'"):
        verify_model_signature(signer, signed_model, blob, files=files)
    verify_model_signature(signer, signed_model, blob, files=files, signature_name="release.sig")


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_larger_curves_verify(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    pair = generate_key(tmp_path / "keys", curve=curve)
    model = write_tiny_model(tmp_path / "model")
    sign_with_key(model, pair.private)
    assert _verify_key(model, pair, files_map(model)).identity == key_identity(pair)


def test_wrong_key_is_refused(tmp_path: Path, signed_model: Path) -> None:
    other = generate_key(tmp_path / "other", stem="other")
    with pytest.raises(SignatureError, match="another key"):
        _verify_key(signed_model, other, files_map(signed_model))


def test_wrong_key_without_hint_fails_on_the_signature_itself(tmp_path: Path, signed_model: Path) -> None:
    bundle = json.loads((signed_model / "model.sig").read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    (signed_model / "model.sig").write_text(json.dumps(bundle))
    other = generate_key(tmp_path / "other", stem="other")
    with pytest.raises(SignatureError, match="does not verify with the public key"):
        _verify_key(signed_model, other, files_map(signed_model))


def test_tampered_file_is_refused_with_both_digests(signed_model: Path, key: KeyPair) -> None:
    weights = signed_model / "model.safetensors"
    signed_digest = files_map(signed_model)["model.safetensors"]
    weights.write_bytes(weights.read_bytes() + b"\x00")
    files = files_map(signed_model)
    with pytest.raises(SignatureError, match=r"model\.safetensors") as info:
        _verify_key(signed_model, key, files)
    assert files["model.safetensors"] in str(info.value)
    assert signed_digest in str(info.value)


def test_extra_unsigned_file_is_refused(signed_model: Path, key: KeyPair) -> None:
    (signed_model / "extra.py").write_text("import os\n")
    with pytest.raises(SignatureError, match=r"does not cover them: 'extra\.py'"):
        _verify_key(signed_model, key, files_map(signed_model))


def test_signed_file_missing_from_files_is_refused_unless_optional(signed_model: Path, key: KeyPair) -> None:
    files = files_map(signed_model, ["config.json", "model.safetensors"])
    with pytest.raises(SignatureError, match=r"not among the model's files: 'tokenizer/vocab\.txt'"):
        _verify_key(signed_model, key, files)
    verified = _verify_key(signed_model, key, files, optional={"tokenizer/vocab.txt"})
    assert "tokenizer/vocab.txt" in verified.digests


def test_optional_does_not_excuse_an_unsigned_file(signed_model: Path, key: KeyPair) -> None:
    (signed_model / "extra.bin").write_bytes(b"x")
    with pytest.raises(SignatureError, match=r"extra\.bin"):
        _verify_key(signed_model, key, files_map(signed_model), optional={"extra.bin"})


def test_signature_over_another_version_is_refused(tmp_path: Path, key: KeyPair) -> None:
    old = write_tiny_model(tmp_path / "v1")
    sign_with_key(old, key.private)
    new = write_tiny_model(tmp_path / "v2")
    (new / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 8}))
    shutil.copy(old / "model.sig", new / "model.sig")
    with pytest.raises(SignatureError, match=r"config\.json"):
        _verify_key(new, key, files_map(new))


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}', b"\xff\xfe"],
    ids=["empty", "text", "list", "no-envelope", "binary"],
)
def test_garbage_signature_is_refused(signed_model: Path, key: KeyPair, content: bytes) -> None:
    (signed_model / "model.sig").write_bytes(content)
    with pytest.raises(SignatureError):
        _verify_key(signed_model, key, files_map(signed_model))


def test_truncated_signature_is_refused(signed_model: Path, key: KeyPair) -> None:
    sig = signed_model / "model.sig"
    sig.write_bytes(sig.read_bytes()[: sig.stat().st_size // 2])
    with pytest.raises(SignatureError, match="not a model-signing bundle"):
        _verify_key(signed_model, key, files_map(signed_model))


def test_missing_signature_is_refused(signed_model: Path, key: KeyPair) -> None:
    (signed_model / "model.sig").unlink()
    with pytest.raises(SignatureError, match="cannot read signature"):
        _verify_key(signed_model, key, files_map(signed_model))


def test_missing_public_key_names_the_field(signed_model: Path, tmp_path: Path) -> None:
    signer = KeySigner("acme", tmp_path / "absent.pub")
    with pytest.raises(SignatureError, match=r"signers\.acme\.public_key"):
        verify_model_signature(
            signer, signed_model, signed_model / "model.sig", files=files_map(signed_model)
        )


def test_malformed_digest_in_files_is_refused(signed_model: Path, key: KeyPair) -> None:
    files = files_map(signed_model)
    files["config.json"] = "md5:abc"
    with pytest.raises(SignatureError, match=r"config\.json"):
        _verify_key(signed_model, key, files)


def test_uppercase_digests_in_files_are_accepted(signed_model: Path, key: KeyPair) -> None:
    files = {k: "sha256:" + v[7:].upper() for k, v in files_map(signed_model).items()}
    _verify_key(signed_model, key, files)


def test_verify_signature_lists_the_signed_files_before_any_are_fetched(
    tmp_path: Path, signed_model: Path, key: KeyPair
) -> None:
    signature = tmp_path / "fetched.sig"
    signature.write_bytes((signed_model / "model.sig").read_bytes())
    verified = verify_signature(KeySigner("acme", key.public), signature)
    assert dict(verified.digests) == files_map(signed_model)
    assert verified.identity == key_identity(key)
    with pytest.raises(SignatureError, match="another key"):
        verify_signature(KeySigner("acme", generate_key(tmp_path / "o", stem="o").public), signature)


# --- statements signed with a valid key but unusable content --------------------------------------


def _sign_statement(model: Path, key: KeyPair, statement: dict[str, Any]) -> None:
    """Write a bundle shaped like model-signing's key bundles over an arbitrary in-toto statement."""
    payload = json.dumps(statement).encode()
    payload_type = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    from cryptography.hazmat.primitives import hashes

    signature = key.key.sign(pae, ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": ""}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type.decode(),
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    (model / "model.sig").write_text(json.dumps(bundle))


def _statement(resources: list[dict[str, str]], **serialization: Any) -> dict[str, Any]:
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "model", "digest": {"sha256": root}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                **serialization,
            },
            "resources": resources,
        },
    }


def _resources(model: Path) -> list[dict[str, str]]:
    return [
        {"name": name, "algorithm": "sha256", "digest": digest[7:]}
        for name, digest in files_map(model).items()
    ]


def test_handmade_statement_in_model_signing_shape_verifies(tmp_path: Path, key: KeyPair) -> None:
    model = write_tiny_model(tmp_path / "model")
    _sign_statement(model, key, _statement(_resources(model)))
    assert dict(_verify_key(model, key, files_map(model)).digests) == files_map(model)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s["predicate"]["serialization"].update(method="shards", shard_size=1024), "serialization"),
        (lambda s: s["predicate"]["serialization"].update(hash_type="blake2"), "serialization"),
        (lambda s: s.update(predicateType="https://model_signing/Digests/v0.1"), "predicate type"),
        (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "in-toto"),
        (lambda s: s["predicate"]["resources"].append(dict(s["predicate"]["resources"][0])), "listed twice"),
        (lambda s: s["predicate"]["resources"][0].update(name="../outside"), "plain relative path"),
        (lambda s: s["predicate"]["resources"][0].update(name="/etc/passwd"), "plain relative path"),
        (
            lambda s: s["predicate"]["resources"][0].update(name="tokenizer/./vocab.txt"),
            "plain relative path",
        ),
        (lambda s: s["predicate"]["resources"][0].update(name="tokenizer\\vocab.txt"), "plain relative path"),
        (lambda s: s["predicate"]["resources"][0].update(algorithm="blake2"), "expected sha256"),
        (lambda s: s["subject"][0]["digest"].update(sha256="0" * 64), "subject digest"),
        (lambda s: s["subject"].append(s["subject"][0]), "exactly one subject"),
    ],
    ids=[
        "shards",
        "blake2",
        "v0.1",
        "statement-type",
        "duplicate",
        "dotdot",
        "absolute",
        "dot-segment",
        "backslash",
        "algorithm",
        "root",
        "subjects",
    ],
)
def test_unusable_statements_are_refused(tmp_path: Path, key: KeyPair, mutate: Any, message: str) -> None:
    model = write_tiny_model(tmp_path / "model")
    statement = _statement(_resources(model))
    mutate(statement)
    _sign_statement(model, key, statement)
    with pytest.raises(SignatureError, match=message):
        _verify_key(model, key, files_map(model))


def test_edited_payload_breaks_the_signature(tmp_path: Path, key: KeyPair, signed_model: Path) -> None:
    bundle = json.loads((signed_model / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "1" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (signed_model / "model.sig").write_text(json.dumps(bundle))
    with pytest.raises(SignatureError, match="does not verify"):
        _verify_key(signed_model, key, files_map(signed_model))


# --- certificate ----------------------------------------------------------------------------------


@pytest.fixture
def cert_model(tmp_path: Path) -> tuple[Path, Any]:
    chain = make_chain(tmp_path / "pki")
    model = write_tiny_model(tmp_path / "model")
    sign_with_certificate(model, chain)
    return model, chain


def _verify_cert(model: Path, signer: CertificateSigner, files: dict[str, str] | None = None) -> Any:
    return verify_model_signature(signer, model, model / "model.sig", files=files or files_map(model))


def test_certificate_signature_verifies_by_fingerprint_and_subject(cert_model: tuple[Path, Any]) -> None:
    model, chain = cert_model
    by_fp = CertificateSigner("acme", (chain.root,), leaf_sha256=chain.leaf_sha256)
    assert _verify_cert(model, by_fp).identity == chain.leaf_subject
    by_subject = CertificateSigner("acme", (chain.root,), leaf_subject=chain.leaf_subject)
    assert dict(_verify_cert(model, by_subject).digests) == files_map(model)
    both = CertificateSigner("acme", (chain.root, chain.intermediate), chain.leaf_sha256, chain.leaf_subject)
    _verify_cert(model, both)


def test_certificate_chain_to_another_root_is_refused(cert_model: tuple[Path, Any], tmp_path: Path) -> None:
    model, chain = cert_model
    stranger = make_chain(tmp_path / "stranger", ca_cn="acme root CA", leaf_cn="acme release signing")
    signer = CertificateSigner("acme", (stranger.root,), leaf_subject=chain.leaf_subject)
    with pytest.raises(SignatureError, match="does not chain to the CA pinned"):
        _verify_cert(model, signer)


def test_intermediate_alone_is_not_a_trust_anchor(cert_model: tuple[Path, Any]) -> None:
    model, chain = cert_model
    signer = CertificateSigner("acme", (chain.intermediate,), leaf_sha256=chain.leaf_sha256)
    with pytest.raises(SignatureError, match="does not chain"):
        _verify_cert(model, signer)


def test_wrong_leaf_fingerprint_is_refused(cert_model: tuple[Path, Any]) -> None:
    model, chain = cert_model
    signer = CertificateSigner("acme", (chain.root,), leaf_sha256="sha256:" + "ab" * 32)
    with pytest.raises(SignatureError, match=r"leaf_sha256") as info:
        _verify_cert(model, signer)
    assert chain.leaf_sha256 in str(info.value)


def test_wrong_leaf_subject_is_refused(cert_model: tuple[Path, Any]) -> None:
    model, chain = cert_model
    signer = CertificateSigner("acme", (chain.root,), leaf_subject="CN=someone else")
    with pytest.raises(SignatureError, match="CN=someone else"):
        _verify_cert(model, signer)


def test_sibling_leaf_from_the_same_ca_is_refused(cert_model: tuple[Path, Any], tmp_path: Path) -> None:
    """Pinning the leaf matters: another certificate from the pinned CA does not pass."""
    model, chain = cert_model
    sibling = issue_sibling_leaf(chain, tmp_path / "sibling", leaf_cn="intruder")
    sign_with_certificate(model, sibling)
    by_ca_only = CertificateSigner("acme", (chain.root,), leaf_sha256=sibling.leaf_sha256)
    assert _verify_cert(model, by_ca_only).identity == sibling.leaf_subject  # the CA did issue it
    for pinned in (
        CertificateSigner("acme", (chain.root,), leaf_sha256=chain.leaf_sha256),
        CertificateSigner("acme", (chain.root,), leaf_subject=chain.leaf_subject),
    ):
        with pytest.raises(SignatureError, match="intruder"):
            _verify_cert(model, pinned)


def test_certificate_signer_without_chain_or_leaf_pin_is_refused(cert_model: tuple[Path, Any]) -> None:
    model, chain = cert_model
    with pytest.raises(SignatureError, match="web roots"):
        _verify_cert(model, CertificateSigner("acme", (), leaf_sha256=chain.leaf_sha256))
    with pytest.raises(SignatureError, match="leaf_sha256 or leaf_subject"):
        _verify_cert(model, CertificateSigner("acme", (chain.root,)))


def test_certificate_signature_with_tampered_file_is_refused(cert_model: tuple[Path, Any]) -> None:
    model, chain = cert_model
    (model / "config.json").write_text("{}")
    with pytest.raises(SignatureError, match=r"config\.json"):
        _verify_cert(model, CertificateSigner("acme", (chain.root,), leaf_sha256=chain.leaf_sha256))


def test_key_bundle_under_a_certificate_signer_is_refused(signed_model: Path, tmp_path: Path) -> None:
    chain = make_chain(tmp_path / "pki")
    with pytest.raises(SignatureError, match="no readable certificate chain"):
        _verify_cert(signed_model, CertificateSigner("acme", (chain.root,), leaf_sha256=chain.leaf_sha256))


def test_certificate_bundle_under_a_key_signer_is_refused(cert_model: tuple[Path, Any], key: KeyPair) -> None:
    model, _ = cert_model
    with pytest.raises(SignatureError, match="carries a certificate"):
        _verify_key(model, key, files_map(model))


def test_certificate_not_yet_valid_is_refused(cert_model: tuple[Path, Any], tmp_path: Path) -> None:
    model, chain = cert_model
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
    future = issue_sibling_leaf(chain, tmp_path / "future", leaf_cn="future", not_before=later)
    sign_with_certificate(model, future)
    with pytest.raises(SignatureError, match="not valid before"):
        _verify_cert(model, CertificateSigner("acme", (chain.root,), leaf_sha256=future.leaf_sha256))


# --- what verification reads ----------------------------------------------------------------------


def test_model_files_are_not_read_again(signed_model: Path, key: KeyPair) -> None:
    """The store's digests are the evidence: verification reads the signature, never the weights."""
    files = files_map(signed_model)
    for name in TINY_FILES:
        (signed_model / name).unlink()
    assert dict(_verify_key(signed_model, key, files).digests) == files


def test_fifo_in_place_of_the_signature_is_refused_without_hanging(signed_model: Path, key: KeyPair) -> None:
    (signed_model / "model.sig").unlink()
    os.mkfifo(signed_model / "model.sig")
    with pytest.raises(SignatureError, match="not a regular file"):
        _verify_key(signed_model, key, files_map(signed_model, list(TINY_FILES)))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mangled_bundles_only_ever_raise_signature_error(
    signed_model: Path, key: KeyPair, data: st.DataObject
) -> None:
    """Any JSON value at any place in a real bundle (or its statement) refuses cleanly or still verifies."""
    original = json.loads((signed_model / "model.sig").read_text())
    statement = json.loads(base64.b64decode(original["dsseEnvelope"]["payload"]))
    target_statement = data.draw(st.booleans())
    document = statement if target_statement else original
    path = data.draw(st.sampled_from(_paths(document)[1:]))
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = data.draw(_JSON)
    if target_statement:
        payload = json.dumps(statement).encode()
        original["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    sig = signed_model / "model.sig"
    saved = sig.read_bytes()
    try:
        sig.write_text(json.dumps(original))
        try:
            _verify_key(signed_model, key, files_map(signed_model))
        except SignatureError:
            pass
    finally:
        sig.write_bytes(saved)
