"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1.

The registry keeps its storage under a temporary folder, so a test can play a lying registry by
editing a blob's ``data`` file there: distribution serves the stored file without re-hashing it.
Uploads use the plain distribution HTTP API (monolithic blob upload, manifest PUT) so the layouts a
test builds by hand are exactly the bytes it wrote; ``oras_push`` uses the real ``oras`` client.

    from tests.helpers.ociregistry import OciRegistry, oras_push
"""

from __future__ import annotations

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

from tests.helpers.hubserver import free_port

__all__ = ["OciRegistry", "oras_push"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json"])


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
    def start(cls, root: Path, *, timeout: float = 30.0) -> OciRegistry:
        """Start docker-registry with its storage under ``root`` and wait until ``/v2/`` answers."""
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
            "  secret: test-only\n"
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
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(root / 'registry.log').read_text()}")
            try:
                with urllib.request.urlopen(server.endpoint + "/v2/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError("docker-registry did not start in time") from None
                time.sleep(0.1)
        return server

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

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
