"""Errors carry their facts as attributes, and a registry that cannot be reached is told apart from one
that lies. The messages are the ones the other tests match; only the attributes and types are new."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import pytest

import safeload
from safeload._jail.fetch import Answer
from safeload._trust.audit import record
from safeload._trust.registries.huggingface import HuggingFaceRegistry
from safeload._trust.store import Store
from safeload._trust.verification import check_pins
from safeload.errors import (
    AuditLogError,
    BomError,
    IntegrityError,
    PolicyError,
    RegistryUnavailableError,
    SafeloadError,
    UntrustedSourceError,
)
from safeload.policy import HuggingFaceRegistrySpec, ModelEntry, Policy, parse_policy

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ PolicyError


def test_a_policy_error_names_its_field() -> None:
    text = f"""
version = 1
[registries.hub]
kind = "huggingface"
endpoint = "https://hub.example"
[models."acme/sentiment"]
registry = "hub"
repo = "acme/sentiment"
revision = "main"
files = {{ "w.safetensors" = "{_sha(b"w")}" }}
"""
    with pytest.raises(PolicyError, match=r"^models\.\"acme/sentiment\"\.revision: ") as caught:
        parse_policy(text)
    assert caught.value.field == 'models."acme/sentiment".revision'
    # Read from a file, the message gains the file's name in front; the field stays the dotted path.
    with pytest.raises(PolicyError, match=r"^/etc/trust\.toml: models\.") as caught:
        parse_policy(text, source=Path("/etc/trust.toml"))
    assert caught.value.field == 'models."acme/sentiment".revision'


def test_a_policy_error_about_a_whole_table_names_the_table() -> None:
    text = 'version = 1\n[signers.ci]\nkind = "certificate"\nchain = ["ca.pem"]\n'
    with pytest.raises(PolicyError, match=r"^signers\.ci: a certificate signer needs") as caught:
        parse_policy(text)
    assert caught.value.field == "signers.ci"


def test_a_policy_error_without_a_field() -> None:
    with pytest.raises(PolicyError, match="not valid TOML") as caught:
        parse_policy("version = ")
    assert caught.value.field is None
    assert PolicyError("plain").field is None


def test_an_unknown_top_level_key_is_its_own_field() -> None:
    with pytest.raises(PolicyError, match=r"^colour: unknown key") as caught:
        parse_policy("version = 1\ncolour = 'blue'\n")
    assert caught.value.field == "colour"


# ---------------------------------------------------------------------------------------- AuditLogError


def test_an_unwritable_audit_log_is_an_audit_log_error(tmp_path: Path) -> None:
    (tmp_path / "dir-not-file").mkdir()
    with pytest.raises(AuditLogError, match="audit_log: cannot append") as caught:
        record(Policy(audit_log=tmp_path / "dir-not-file"), name="x", decision="allow")
    # Still a PolicyError, as it was before it had a type of its own, so existing handlers catch it.
    assert isinstance(caught.value, PolicyError)
    assert caught.value.field == "audit_log" and caught.value.path == str(tmp_path / "dir-not-file")


# --------------------------------------------------------------------------------------- IntegrityError


def test_a_pin_mismatch_carries_path_and_digests(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    src = tmp_path / "w.bin"
    src.write_bytes(b"actual")
    pinned = "sha256:" + "0" * 64
    with store.staging() as staging, pytest.raises(IntegrityError, match="test file: expected") as caught:
        store.ingest_copy(src, staging, expected=pinned, what="test file")
    exc = caught.value
    assert (exc.path, exc.expected, exc.actual) == ("test file", pinned, _sha(b"actual"))


def test_a_tampered_blob_carries_its_digests_through_the_named_repair(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    src = tmp_path / "w.bin"
    src.write_bytes(b"good")
    with store.staging() as staging:
        store.ingest_copy(src, staging, expected=_sha(b"good"), what="w.bin")
    blob = store.blob_path(_sha(b"good"))
    os.chmod(blob, 0o644)
    blob.write_bytes(b"evil")
    os.chmod(blob, 0o444)
    with pytest.raises(IntegrityError, match="modified after it was verified") as caught:
        store.rehash_blob(_sha(b"good"))
    exc = caught.value
    assert (exc.path, exc.expected, exc.actual) == (str(blob), _sha(b"good"), _sha(b"evil"))
    named = Store.name_repair(exc, "acme/m")
    assert "--refetch acme/m" in str(named) and type(named) is IntegrityError
    assert (named.path, named.expected, named.actual) == (exc.path, exc.expected, exc.actual)


def test_the_verdict_on_pins_names_the_one_file_to_blame() -> None:
    pins = {"w.safetensors": _sha(b"w"), "config.json": _sha(b"c")}
    entry = ModelEntry(name="acme/m", registry="hub", repo="acme/m", revision=COMMIT, files=pins)
    served = {"w.safetensors": _sha(b"evil"), "config.json": _sha(b"c")}
    with pytest.raises(IntegrityError, match=r"w\.safetensors: pinned .*, store has ") as caught:
        check_pins(entry, served, where="acme/m")
    exc = caught.value
    assert (exc.path, exc.expected, exc.actual) == ("w.safetensors", _sha(b"w"), _sha(b"evil"))
    # Two problems: no single file to name, so the facts stay None (the message lists both).
    with pytest.raises(IntegrityError, match="served but not pinned") as caught:
        check_pins(entry, {**served, "extra.bin": _sha(b"x")}, where="acme/m")
    assert (caught.value.path, caught.value.expected, caught.value.actual) == (None, None, None)


def test_integrity_error_facts_default_to_none_and_survive_copying() -> None:
    # copy.copy rebuilds an exception the way pickle does (__reduce_ex__), without unpickling in the host.
    bare = IntegrityError("a listing entry is not an object")
    assert (bare.path, bare.expected, bare.actual) == (None, None, None)
    full = IntegrityError("m", path="w.bin", expected=_sha(b"a"), actual=_sha(b"b"))
    again = copy.copy(full)
    assert (str(again), again.path, again.expected, again.actual) == ("m", "w.bin", _sha(b"a"), _sha(b"b"))
    policy = copy.copy(PolicyError("x: bad", field="x"))
    assert (str(policy), policy.field) == ("x: bad", "x")


# ----------------------------------------------------------------------------- RegistryUnavailableError


def _registry() -> HuggingFaceRegistry:
    return HuggingFaceRegistry(HuggingFaceRegistrySpec(name="hub", endpoint="https://hub.example"))


@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [
        ("network", None, "no connection to hub.example:443: ConnectionRefusedError: [Errno 111]"),
        ("network", None, "no connection to hub.example:443: gaierror: [Errno -2] Name or service not known"),
        ("network", None, "SSLCertVerificationError: certificate verify failed"),
        ("network", None, "TimeoutError: timed out"),
        ("network", None, "the body ended after 10 of 20 bytes"),
        ("http", 500, "HTTP 500 Internal Server Error"),
        ("http", 503, "HTTP 503 Service Unavailable"),
        ("http", 429, "HTTP 429 Too Many Requests"),
    ],
)
def test_transport_failures_are_registry_unavailable(kind: str, status: int | None, message: str) -> None:
    answer = Answer(id="a", ok=False, kind=kind, status=status, message=message)
    error = _registry()._failure(answer, "acme/m@main: w.bin")
    assert isinstance(error, RegistryUnavailableError)
    text = str(error)
    where = "registry 'hub' (https://hub.example)"
    assert text.startswith(f"{where}: could not fetch acme/m@main: w.bin: {message}; ")
    fix = "try again later" if kind == "http" else "[registries.hub] endpoint is right and reachable"
    assert fix in text


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("http", 400, SafeloadError),
        ("http", 401, UntrustedSourceError),
        ("http", 404, UntrustedSourceError),
        ("rule", None, IntegrityError),
        ("cap", None, IntegrityError),
        ("redirect", None, UntrustedSourceError),
    ],
)
def test_refusals_and_lies_are_not_unavailability(
    kind: str, status: int | None, error: type[Exception]
) -> None:
    answer = Answer(id="a", ok=False, kind=kind, status=status, message="m")
    got = _registry()._failure(answer, "w.bin")
    assert type(got) is error and not isinstance(got, RegistryUnavailableError)


def test_the_new_errors_are_importable_from_safeload() -> None:
    for error in (RegistryUnavailableError, BomError, AuditLogError):
        assert getattr(safeload, error.__name__) is error and issubclass(error, SafeloadError)
        assert error.__name__ in safeload.__all__
