"""Signed models through the fetch path: signatures made in the tests with model-signing, served by olah."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safeload._trust.resolve import fetch_model
from safeload._trust.store import Store
from safeload.errors import SignatureError
from safeload.policy import load_policy
from tests.helpers.signing import KeyPair, generate_key, key_identity, sign_with_key, write_tiny_model
from tests.helpers.trust import write_policy
from tests.integration.conftest import SessionHub


def _files(model_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def signed(
    hub: SessionHub, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, bytes], KeyPair]:
    """A repo with a tiny model and model.sig made with a fresh ECDSA key; returns (commit, files, key)."""
    base = tmp_path_factory.mktemp("signed")
    model = write_tiny_model(base / "model")
    keys = base / "keys"
    pair = generate_key(keys, "release")
    sign_with_key(model, keys / "release.key")
    files = _files(model)
    sha = hub.add_repo("signed/tiny", files)
    return sha, files, pair


def _policy(tmp_path: Path, hub: SessionHub, repo: str, sha: str, public_key: Path, **model: object) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
        signers={"release": {"kind": "key", "public_key": str(public_key)}},
        models={"m": {"registry": "hub", "repo": repo, "revision": sha, "signer": "release", **model}},
        audit_log=tmp_path / "audit.jsonl",
    )


def test_signed_model_without_pins_gets_exactly_the_signed_files(
    tmp_path: Path, hub: SessionHub, signed: tuple[str, dict[str, bytes], KeyPair]
) -> None:
    sha, files, keys = signed
    got = fetch_model("m", policy=load_policy(_policy(tmp_path, hub, "signed/tiny", sha, keys.public)))
    want = {rel: _digest(data) for rel, data in files.items() if rel != "model.sig"}
    assert dict(got.files) == want
    assert got.signature is not None and got.signature.signer == "release"
    assert got.signature.identity == key_identity(keys)
    on_disk = {p.relative_to(got.folder).as_posix() for p in got.folder.rglob("*") if p.is_file()}
    assert on_disk == set(want)  # model.sig itself is not in the folder
    warm = fetch_model("m", policy=load_policy(tmp_path / "trust.toml"))
    assert warm.signature is not None and warm.signature.identity == got.signature.identity
    assert '"signer_identity": "sha256:' in (tmp_path / "audit.jsonl").read_text()


def test_signed_model_with_pins_keeps_unpinned_signed_files_out(
    tmp_path: Path, hub: SessionHub, signed: tuple[str, dict[str, bytes], KeyPair]
) -> None:
    sha, files, keys = signed
    pinned = {"config.json": _digest(files["config.json"])}
    got = fetch_model(
        "m",
        policy=load_policy(_policy(tmp_path, hub, "signed/tiny", sha, keys.public, files=pinned)),
    )
    assert sorted(os.listdir(got.folder)) == ["config.json"]


def test_wrong_key_is_refused(
    tmp_path: Path, hub: SessionHub, signed: tuple[str, dict[str, bytes], KeyPair]
) -> None:
    sha, _, _ = signed
    other = generate_key(tmp_path / "other", "other")
    with pytest.raises(SignatureError):
        fetch_model("m", policy=load_policy(_policy(tmp_path, hub, "signed/tiny", sha, other.public)))
    assert not Store(tmp_path / "store").model_folder("hub", "signed/tiny", sha).exists()


def test_tampered_file_is_refused(tmp_path: Path, hub: SessionHub) -> None:
    model = write_tiny_model(tmp_path / "src")
    keys = generate_key(tmp_path / "keys", "k")
    sign_with_key(model, keys.private)
    sha = hub.add_repo("signed/tampered", _files(model))
    hub.replace_blob(
        "signed/tampered", "model.safetensors", b"\x09" * (model / "model.safetensors").stat().st_size
    )
    with pytest.raises(SignatureError):
        fetch_model("m", policy=load_policy(_policy(tmp_path, hub, "signed/tampered", sha, keys.public)))
    assert not Store(tmp_path / "store").model_folder("hub", "signed/tampered", sha).exists()


def test_extra_unsigned_pinned_file_is_refused(tmp_path: Path, hub: SessionHub) -> None:
    model = write_tiny_model(tmp_path / "src")
    keys = generate_key(tmp_path / "keys", "k")
    sign_with_key(model, keys.private)
    files = {**_files(model), "extra.json": b'{"unsigned": true}'}
    sha = hub.add_repo("signed/extra", files)
    pinned = {rel: _digest(data) for rel, data in files.items() if rel != "model.sig"}
    with pytest.raises(SignatureError, match=r"extra\.json"):
        fetch_model(
            "m", policy=load_policy(_policy(tmp_path, hub, "signed/extra", sha, keys.public, files=pinned))
        )


def test_signature_over_other_bytes_than_the_pins_is_refused(tmp_path: Path, hub: SessionHub) -> None:
    model = write_tiny_model(tmp_path / "src")
    keys = generate_key(tmp_path / "keys", "k")
    sign_with_key(model, keys.private)
    files = _files(model)
    files["config.json"] = b'{"model_type": "tiny", "hidden_size": 8}'  # committed after signing
    sha = hub.add_repo("signed/drift", files)
    pinned = {rel: _digest(data) for rel, data in files.items() if rel != "model.sig"}
    with pytest.raises(SignatureError):
        fetch_model(
            "m", policy=load_policy(_policy(tmp_path, hub, "signed/drift", sha, keys.public, files=pinned))
        )


def test_missing_signature_file_is_refused(tmp_path: Path, hub: SessionHub) -> None:
    model = write_tiny_model(tmp_path / "src")
    keys = generate_key(tmp_path / "keys", "k")
    files = _files(model)
    sha = hub.add_repo("signed/none", files)
    pinned = {rel: _digest(data) for rel, data in files.items()}
    with pytest.raises(SignatureError) as info:
        fetch_model(
            "m", policy=load_policy(_policy(tmp_path, hub, "signed/none", sha, keys.public, files=pinned))
        )
    assert "model.sig" in str(info.value)
