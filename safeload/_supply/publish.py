"""``safeload push``: publish a model already verified in the store as a CNCF ModelPack OCI artifact.

Every byte pushed is read from the store: the model's verified blobs become one raw layer each (named
by ``org.cncf.model.filepath``), and its model-signing bundle, its verified evaluation attestation and
the ML-BOM that ``safeload bom`` writes are attached to the manifest as OCI 1.1 referrers. A registry
that does not index referrers itself (it answers the referrer's PUT without ``OCI-Subject``, as
distribution 2.8 does) gets the referrers tag schema index ``sha256-<hex>`` updated instead. Nothing is
timestamped, so pushing the same verified model twice yields the same manifest digest.

The upload talks to the registry directly, not through the fetch jail: it writes no file, and every
answer it reads is a status line, a few headers and at most 1 MiB of error text. An upload ``Location``
outside the registry's origin is refused before any byte or credential is sent to it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

from safeload._trust.hashing import progress_bar
from safeload.errors import (
    IntegrityError,
    PolicyError,
    RegistryUnavailableError,
    SafeloadError,
    UntrustedSourceError,
)
from safeload.policy import ModelEntry, OciRegistrySpec, Policy

if TYPE_CHECKING:
    from safeload._trust.registries.oci import OciRegistry

__all__ = ["PushResult", "push_model"]

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SIGNATURE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BOM = "application/vnd.cyclonedx+json"
ATTESTATION = "application/vnd.in-toto+json"
FILEPATH = "org.cncf.model.filepath"
TITLE = "org.opencontainers.image.title"

_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".npz")
_DOCS = (".md", ".txt", ".rst")
_ANSWER_CAP = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PushResult:
    """What was published: the manifest digest, where, and the ``[models]`` entry that pins it."""

    reference: str  # oci://HOST/REPO@sha256:...
    digest: str
    entry: ModelEntry
    uploaded: int  # bytes sent (blobs the registry already had are not sent again)
    attached: tuple[str, ...]  # artifact types attached as referrers


def _layer_type(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1].lower()
    if name.endswith(_WEIGHTS):
        return "application/vnd.cncf.model.weight.v1.raw"
    if name.endswith(_DOCS) or name.startswith(("license", "readme", "notice")):
        return "application/vnd.cncf.model.doc.v1.raw"
    if name.endswith(".py"):
        return "application/vnd.cncf.model.code.v1.raw"
    return "application/vnd.cncf.model.weight.config.v1.raw"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class _Client:
    """The registry's HTTP API on one origin; credentials go to that origin and nowhere else."""

    def __init__(self, spec: OciRegistrySpec, registry: OciRegistry, scope: str) -> None:
        parts = urlsplit(spec.endpoint)
        self._origin = (parts.scheme, parts.netloc)
        self._endpoint = spec.endpoint.rstrip("/")
        self._registry = registry
        self._scope = scope
        self._auth = registry.authorization()
        self._where = f"registry {spec.name!r} ({spec.endpoint})"
        self._context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            from safeload._trust.registries._http import ca_bundle

            self._context = ssl.create_default_context(cadata=ca_bundle())

    def _connection(self) -> http.client.HTTPConnection:
        host = urlsplit(self._endpoint).netloc
        if self._context is not None:
            return http.client.HTTPSConnection(host, timeout=300, context=self._context)
        return http.client.HTTPConnection(host, timeout=300)

    def _target(self, url: str) -> str:
        absolute = urljoin(self._endpoint + "/", url)
        parts = urlsplit(absolute)
        if (parts.scheme, parts.netloc) != self._origin:
            raise UntrustedSourceError(
                f"{self._where}: the registry sent the upload to {parts.scheme}://{parts.netloc}, another "
                "origin; nothing (and no credential) was sent there. safeload pushes to the registry's own "
                "endpoint only"
            )
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def call(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        stream: Callable[[http.client.HTTPConnection], None] | None = None,
        length: int | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request; returns the status, headers (lower-cased names) and at most 1 MiB of body. A
        401 with a Bearer challenge gets a token from the registry's token service, and the request
        (unless its body is streamed) is sent once more with it."""
        answer = self._call(method, url, body, headers, stream=stream, length=length)
        if answer[0] == 401 and self._registry.authenticate(answer[1].get("www-authenticate"), self._scope):
            self._auth = self._registry.authorization()
            if stream is None:
                answer = self._call(method, url, body, headers)
        return answer

    def _call(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        *,
        stream: Callable[[http.client.HTTPConnection], None] | None = None,
        length: int | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        conn = self._connection()
        try:
            conn.putrequest(method, self._target(url), skip_accept_encoding=True)
            sent = dict(headers or {})
            if self._auth is not None:
                sent["Authorization"] = self._auth
            size = len(body) if body is not None else (length or 0)
            sent["Content-Length"] = str(size)
            for key, value in sent.items():
                conn.putheader(key, value)
            conn.endheaders()
            if body:
                conn.send(body)
            elif stream is not None:
                stream(conn)
            resp = conn.getresponse()
            data = resp.read(_ANSWER_CAP)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryUnavailableError(
                f"{self._where}: {method} failed: {exc}; is the registry reachable?"
            ) from exc
        finally:
            conn.close()

    def expect(self, answer: tuple[int, Mapping[str, str], bytes], ok: tuple[int, ...], what: str) -> None:
        status, _, body = answer
        if status in ok:
            return
        if status in (401, 403):
            raise UntrustedSourceError(
                f"{self._where}: {what}: access refused (HTTP {status}); log in (docker login writes "
                "~/.docker/config.json; REGISTRY_AUTH_FILE names another) or set token_env in trust.toml"
            )
        text = body[:300].decode("utf-8", "replace").strip()
        # A server error or "come back later" is the registry being unavailable, not refusing the upload.
        error = RegistryUnavailableError if status >= 500 or status == 429 else SafeloadError
        raise error(f"{self._where}: {what}: HTTP {status}: {text}")


class _Pusher:
    def __init__(self, client: _Client, name: str, progress: bool | None) -> None:
        self._client = client
        self._name = name
        self._progress = progress
        self.uploaded = 0

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self._name}/{kind}/{quote(reference, safe=':')}"

    def has_blob(self, digest: str) -> bool:
        status, _, _ = self._client.call("HEAD", self._path("blobs", digest))
        return status == 200

    def _start_upload(self) -> str:
        answer = self._client.call("POST", f"/v2/{self._name}/blobs/uploads/", b"")
        self._client.expect(answer, (202,), "starting a blob upload")
        location = answer[1].get("location")
        if not location:
            raise SafeloadError("the registry started an upload but sent no Location")
        return location

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        return f"{location}{'&' if '?' in location else '?'}digest={quote(digest, safe='')}"

    def blob_bytes(self, data: bytes) -> str:
        digest = _digest(data)
        if not self.has_blob(digest):
            location = self._start_upload()
            headers = {"Content-Type": "application/octet-stream"}
            answer = self._client.call("PUT", self._with_digest(location, digest), data, headers)
            self._client.expect(answer, (201,), f"uploading blob {digest}")
            self.uploaded += len(data)
        return digest

    def blob_file(self, path: Path, digest: str, size: int, advance: Callable[[int], None]) -> None:
        """Upload a store blob, hashed again as it is sent: a blob changed on disk since it was verified
        is caught here (the registry, checking the digest, refuses it too)."""
        if self.has_blob(digest):
            advance(size)
            return
        location = self._start_upload()
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
        hasher = hashlib.sha256()

        def stream(conn: http.client.HTTPConnection) -> None:
            left = size
            while left > 0:
                chunk = os.read(fd, min(_CHUNK, left))
                if not chunk:
                    break
                hasher.update(chunk)
                conn.send(chunk)
                left -= len(chunk)
                advance(len(chunk))

        try:
            if os.fstat(fd).st_size != size:
                raise IntegrityError(f"{path}: the store blob {digest} changed size since it was verified")
            answer = self._client.call(
                "PUT",
                self._with_digest(location, digest),
                None,
                {"Content-Type": "application/octet-stream"},
                stream=stream,
                length=size,
            )
        finally:
            os.close(fd)
        if "sha256:" + hasher.hexdigest() != digest:
            raise IntegrityError(
                f"{path}: the store blob no longer hashes to {digest}; run safeload verify",
                path=str(path), expected=digest, actual="sha256:" + hasher.hexdigest(),
            )
        self._client.expect(answer, (201,), f"uploading blob {digest}")
        self.uploaded += size

    def manifest(self, manifest: Mapping[str, object], reference: str) -> tuple[str, int, Mapping[str, str]]:
        raw = _json(manifest)
        digest = _digest(raw)
        answer = self._client.call(
            "PUT", self._path("manifests", reference), raw, {"Content-Type": str(manifest["mediaType"])}
        )
        self._client.expect(answer, (201,), f"putting the manifest {reference}")
        served = answer[1].get("docker-content-digest")
        if served is not None and served != digest:
            raise IntegrityError(
                f"the registry stored the manifest as {served}, not {digest} (the bytes sent); it rewrote it"
            )
        return digest, len(raw), answer[1]

    def attach(
        self, subject: Mapping[str, object], artifact_type: str, payload: bytes, layer_type: str | None = None
    ) -> str:
        """Attach ``payload`` to ``subject`` as a referrer; keeps the tag schema index where needed."""
        empty = b"{}"
        referrer = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY, "digest": self.blob_bytes(empty), "size": len(empty)},
            "layers": [
                {
                    "mediaType": layer_type or artifact_type,
                    "digest": self.blob_bytes(payload),
                    "size": len(payload),
                }
            ],
            "subject": dict(subject),
        }
        raw = _json(referrer)
        digest, size, headers = self.manifest(referrer, _digest(raw))
        if "oci-subject" not in headers:
            self._tag_schema(
                str(subject["digest"]),
                {
                    "mediaType": MANIFEST,
                    "digest": digest,
                    "size": size,
                    "artifactType": artifact_type,
                },
            )
        return digest

    def _tag_schema(self, subject: str, descriptor: Mapping[str, object]) -> None:
        tag = "sha256-" + subject.removeprefix("sha256:")
        status, _, body = self._client.call("GET", self._path("manifests", tag), headers={"Accept": INDEX})
        listed: list[object] = []
        if status == 200:
            try:
                old = json.loads(body)
                listed = [m for m in old.get("manifests", []) if m.get("digest") != descriptor["digest"]]
            except (ValueError, AttributeError):
                listed = []  # not an index: replaced by one
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [*listed, dict(descriptor)]}
        self.manifest(index, tag)


def push_model(
    name: str, target: str, *, policy: Policy, registry: str | None = None, progress: bool | None = None
) -> PushResult:
    """Publish model ``name`` (verified into the store through ``policy`` first) to ``target``,
    ``oci://HOST[:PORT]/REPO:TAG``, as a ModelPack artifact with its signature and ML-BOM attached.

    Raises:
        PolicyError: ``target`` is malformed, names a digest, or no single oci registry of the policy
            has its host.
        UntrustedSourceError: the name is not pinned, the registry refuses access or redirects uploads
            to another origin.
        IntegrityError: a store blob no longer hashes to its digest; the registry rewrote a manifest.
        SignatureError: the model's signature does not verify (it is checked before anything is sent).
        RegistryUnavailableError: the registry cannot be reached, or fails (5xx, 429).
        SafeloadError: the registry refuses an upload.
    """
    from safeload._supply.bom import bom_model, build_bom
    from safeload._trust.pinning import oci_target
    from safeload._trust.registries.oci import OciRegistry
    from safeload._trust.resolve import fetch_model
    from safeload._trust.store import Store

    where = oci_target(target, policy, registry=registry)
    if where.digest is not None or where.tag is None:
        raise PolicyError(f"{target}: push to a tag (oci://HOST/REPO:TAG); the digest is what it prints")
    fetched = fetch_model(name, policy=policy, progress=progress)
    store = Store(policy.store)
    entry = fetched.entry
    record = store.read_model(entry.registry, entry.repo, entry.store_revision())
    if record is None:  # fetch_model just published it; only a concurrent gc removes it
        raise IntegrityError(f"model {name!r} left the store while it was being pushed; try again")
    document = build_bom([bom_model(fetched, policy)])
    oci = OciRegistry(where.spec)
    path = oci.repository_path(where.repo)
    pusher = _Pusher(_Client(where.spec, oci, f"repository:{path}:pull,push"), path, progress)

    blobs = {rel: record.files[rel] for rel in sorted(record.files)}
    total = sum(rec.size for rec in blobs.values())
    with progress_bar(f"pushing {name} to {target}", total, progress) as advance:
        for rec in {r.digest: r for r in blobs.values()}.values():
            pusher.blob_file(store.blob_path(rec.digest), rec.digest, rec.size, advance)
    layers = [
        {
            "mediaType": _layer_type(rel),
            "digest": rec.digest,
            "size": rec.size,
            "annotations": {FILEPATH: rel, TITLE: rel},
        }
        for rel, rec in blobs.items()
    ]
    config = _json(
        {
            "descriptor": {"name": name, "family": _family(fetched.folder)},
            "config": {},
            "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": ARTIFACT,
        "config": {"mediaType": CONFIG, "digest": pusher.blob_bytes(config), "size": len(config)},
        "layers": layers,
        "annotations": {"org.cncf.model.name": name},
    }
    digest, size, _ = pusher.manifest(manifest, where.tag)
    subject = {"mediaType": MANIFEST, "digest": digest, "size": size}
    attached: list[str] = []
    if record.signature_digest is not None:
        pusher.attach(subject, SIGNATURE, store.blob_path(record.signature_digest).read_bytes())
        attached.append(SIGNATURE)
    evaluation = record.extra.evaluation_digest
    if evaluation is not None:
        pusher.attach(subject, ATTESTATION, store.blob_path(evaluation).read_bytes(), layer_type=SIGNATURE)
        attached.append(ATTESTATION)
    pusher.attach(subject, BOM, _json(document))
    attached.append(BOM)
    pinned = ModelEntry(
        name=name,
        registry=where.spec.name,
        repo=where.repo,
        revision=digest,
        files=MappingProxyType({rel: rec.digest for rel, rec in blobs.items()}),
        signer=entry.signer,
        task=entry.task,
        datasets=entry.datasets,
        require_evaluation=entry.require_evaluation,
    )
    host = urlsplit(where.spec.endpoint).netloc
    return PushResult(
        reference=f"oci://{host}/{oci.repository_path(where.repo)}@{digest}",
        digest=digest,
        entry=pinned,
        uploaded=pusher.uploaded,
        attached=tuple(attached),
    )


def _family(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_bytes()[: 4 << 20])
    except (OSError, ValueError):
        return ""
    family = config.get("model_type") if isinstance(config, dict) else None
    return family if isinstance(family, str) else ""
