"""TLS inside the fetch jail: an https registry is verified against the host's CA settings.

The jail has no ``/etc/ssl`` of its own; the host hands the worker the CA bundle it would use itself
(``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``, the system bundle, certifi). A server with a certificate
from a CA made here loads when that CA is configured, and is refused when it is not; a redirect from it
to plain http is refused even when the http host is allowed.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from safeload._trust.resolve import fetch_model
from safeload.errors import SafeloadError, UntrustedSourceError
from safeload.policy import load_policy
from tests.helpers.trust import write_policy

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
BODY = b'{"model_type": "bert"}'


def _ca_and_server_cert(tmp: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "safeload test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return ca_pem, cert_pem, key_pem


class _State:
    location: str | None = None
    requests: int = 0


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: bool) -> None:
            state.requests += 1
            redirect = state.location is not None and self.command == "GET"
            self.send_response(302 if redirect else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", '"' + hashlib.sha1(BODY).hexdigest() + '"')
            if redirect:
                self.send_header("Location", str(state.location))
            self.send_header("Content-Length", str(len(BODY)))
            self.send_header("Connection", "close")
            self.end_headers()
            if body:
                self.wfile.write(BODY)

        def do_HEAD(self) -> None:
            self._answer(False)

        def do_GET(self) -> None:
            self._answer(True)

    return Handler


@pytest.fixture
def https_hub(tmp_path: Path) -> Iterator[tuple[str, Path, _State]]:
    ca, cert, key = _ca_and_server_cert(tmp_path)
    state = _State()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", ca, state
    finally:
        server.shutdown()
        server.server_close()


def _policy(tmp_path: Path, endpoint: str, **registry: object) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"tls": {"kind": "huggingface", "endpoint": endpoint, **registry}},
        models={
            "m": {
                "registry": "tls",
                "repo": "acme/model",
                "revision": COMMIT,
                "files": {"config.json": "sha256:" + hashlib.sha256(BODY).hexdigest()},
            }
        },
    )


def test_an_https_registry_with_the_configured_ca_loads(
    tmp_path: Path, https_hub: tuple[str, Path, _State], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, ca, _ = https_hub
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    fetched = fetch_model("m", policy=load_policy(_policy(tmp_path, endpoint)), progress=False)
    assert (fetched.folder / "config.json").read_bytes() == BODY


def test_an_https_registry_from_an_unknown_ca_is_refused(
    tmp_path: Path, https_hub: tuple[str, Path, _State], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, _, _ = https_hub
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with pytest.raises(SafeloadError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_model("m", policy=load_policy(_policy(tmp_path, endpoint)), progress=False)
    assert not any(p.is_file() for p in (tmp_path / "store" / "blobs").rglob("*"))


def test_a_redirect_from_https_to_plain_http_is_refused(
    tmp_path: Path, https_hub: tuple[str, Path, _State], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, ca, state = https_hub
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    port = endpoint.rsplit(":", 1)[1]
    state.location = f"http://127.0.0.1:{port}/plain"
    policy = load_policy(_policy(tmp_path, endpoint, redirect_hosts=[f"127.0.0.1:{port}"]))
    with pytest.raises(SafeloadError, match="leaves https for plain http") as caught:
        fetch_model("m", policy=policy, progress=False)
    assert not isinstance(caught.value, UntrustedSourceError)
    assert state.requests == 2  # the HEAD and the GET that redirected; nothing went to the http URL
