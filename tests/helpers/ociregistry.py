"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

The registry keeps its storage under a temporary folder, so a test can play a lying registry by
editing a blob's ``data`` file there: distribution serves the stored file without re-hashing it.
Uploads use the plain distribution HTTP API (monolithic blob upload, manifest PUT) so the layouts a
test builds by hand are exactly the bytes it wrote; ``oras_push`` uses the real ``oras`` client.

    from tests.helpers.ociregistry import OciRegistry, oras_push
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.hubserver import free_port, stop_process, wait_for_http

__all__ = ["OciRegistry", "TokenService", "oras_push"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json"])


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """A Docker token service for ``auth: token``: checks Basic credentials, records every request it
    gets (to prove where credentials went), and issues ES256 JWTs that distribution verifies against
    the root certificate it is configured with (the signing certificate travels in ``x5c``)."""

    ISSUER = "safeload-test-issuer"
    SERVICE = "safeload-test-registry"

    def __init__(self, root: Path, users: Mapping[str, str]) -> None:
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key, self._key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

        def cert(
            subject: str,
            key: ec.EllipticCurvePrivateKey,
            issuer: str,
            signer: ec.EllipticCurvePrivateKey,
            ca: bool,
        ) -> x509.Certificate:
            return (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(hours=2))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(signer, hashes.SHA256())
            )

        ca_cert = cert("safeload test token CA", ca_key, "safeload test token CA", ca_key, True)
        leaf = cert("safeload test token signer", self._key, "safeload test token CA", ca_key, False)
        self.root_bundle = root / "token-ca.pem"
        self.root_bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
        self.users = dict(users)
        self.seen: list[dict[str, str]] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                service.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                body, status = service._answer(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _answer(self, path: str, authorization: str | None) -> tuple[bytes, int]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        subject = ""
        if authorization is not None:
            user, _, password = base64.b64decode(authorization.removeprefix("Basic ")).decode().partition(":")
            if self.users.get(user) != password:
                return b'{"details": "bad credentials"}', 401
            subject = user
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if subject or a == "pull"]  # anonymous: no push
            access.append({"type": kind, "name": name, "actions": granted if subject else []})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        claims = {
            "iss": self.ISSUER,
            "sub": subject,
            "aud": query.get("service", [""])[0],
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        token = f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        return json.dumps({"token": token, "expires_in": 600}).encode(), 200

    def config(self) -> str:
        return (
            "auth:\n  token:\n"
            f"    realm: {self.realm}\n    service: {self.SERVICE}\n    issuer: {self.ISSUER}\n"
            f"    rootcertbundle: {json.dumps(str(self.root_bundle))}\n"
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class OciRegistry:
    """A running docker-registry process and the folder it stores blobs in."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}"

    @classmethod
    def start(cls, root: Path, *, timeout: float = 30.0, auth: TokenService | None = None) -> OciRegistry:
        """Start docker-registry with its storage under ``root`` and wait until ``/v2/`` answers;
        with ``auth``, every request needs a token from that service."""
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        if not os.path.exists(binary):
            raise RuntimeError("docker-registry is not installed: run `scripts/run setup`")
        root = Path(root)
        storage = root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {json.dumps(str(storage))}\n"
            "  delete:\n    enabled: true\n"
            "  cache:\n    blobdescriptor: ''\n"
            "http:\n"
            f"  addr: 127.0.0.1:{port}\n"
            "  secret: test-only\n" + (auth.config() if auth is not None else "")
        )
        log = open(root / "registry.log", "wb")
        proc = subprocess.Popen(
            [binary, "serve", str(config)],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        server = cls(root=storage, port=port, proc=proc)
        wait_for_http(server.endpoint + "/v2/", proc, root / "registry.log", "docker-registry", timeout)
        return server

    def stop(self) -> None:
        stop_process(self.proc)

    def _call(
        self, method: str, url: str, data: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        if not url.startswith("http"):
            url = self.endpoint + url
        req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {url}: {exc.code} {exc.read()[:500]!r}") from None

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repo`` (monolithic upload); returns its digest."""
        digest = _digest(data)
        _, _, headers = self._call("POST", f"/v2/{repo}/blobs/uploads/", b"")
        location = urllib.parse.urljoin(self.endpoint, headers["Location"])
        sep = "&" if "?" in location else "?"
        self._call(
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            data,
            {"Content-Type": "application/octet-stream"},
        )
        return digest

    def push_manifest(self, repo: str, manifest: Mapping[str, object], reference: str) -> str:
        """PUT ``manifest`` under ``reference`` (a tag or a digest); returns the digest of the bytes sent."""
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        media = str(manifest.get("mediaType", OCI_MANIFEST))
        self._call("PUT", f"/v2/{repo}/manifests/{reference}", raw, {"Content-Type": media})
        return _digest(raw)

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        """The manifest bytes served for ``reference`` and the registry's Docker-Content-Digest."""
        _, body, headers = self._call("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": _ACCEPT})
        return body, headers.get("Docker-Content-Digest", "")

    def attach(
        self,
        repo: str,
        subject_digest: str,
        subject_size: int,
        artifact_type: str,
        payload: bytes,
        payload_media_type: str,
    ) -> str:
        """Attach ``payload`` to a manifest as an OCI 1.1 referrer, listed in the referrers tag schema
        index ``sha256-<hex>`` (distribution 2.8 has no referrers API); returns the referrer's digest."""
        empty = b"{}"
        referrer: dict[str, object] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": self.push_blob(repo, empty),
                "size": len(empty),
            },
            "layers": [
                {
                    "mediaType": payload_media_type,
                    "digest": self.push_blob(repo, payload),
                    "size": len(payload),
                }
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        }
        raw = json.dumps(referrer, separators=(",", ":")).encode()
        ref_digest = self.push_manifest(repo, referrer, _digest(raw))
        tag = "sha256-" + subject_digest.removeprefix("sha256:")
        try:
            existing = json.loads(self.manifest(repo, tag)[0]).get("manifests", [])
        except RuntimeError:
            existing = []
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                *existing,
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": ref_digest,
                    "size": len(raw),
                    "artifactType": artifact_type,
                },
            ],
        }
        self.push_manifest(repo, index, tag)
        return ref_digest


def oras_push(registry: OciRegistry, ref: str, files: Mapping[str, Path]) -> str:
    """Push ``files`` (name -> path; the name is the basename oras records as the title) with the real
    ``oras`` client; returns the manifest digest the registry stored under ``ref``."""
    import oras.client

    for name, path in files.items():
        if Path(path).name != name:
            raise ValueError(f"oras titles a file by its basename: {name!r} vs {path}")
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    client.push(files=[str(p) for p in files.values()], target=ref, disable_path_validation=True)
    repo, _, tag = ref.removeprefix(registry.host + "/").rpartition(":")
    return registry.manifest(repo, tag)[1]
