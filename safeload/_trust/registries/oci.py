"""``kind = "oci"``: model artifacts in an OCI distribution registry, pulled by manifest digest.

Everything is fetched by digest through the fetch jail (:mod:`safeload._trust.registries._http`): the
manifest at the pinned digest (its bytes must hash to the pin), then the layer blobs it names, each
capped at its descriptor's size before a byte is read and hashed against its descriptor's digest and
the ``[files]`` pin of its file name. A tag is never followed at load time; ``resolve_revision`` (for
``safeload pin --resolve``) turns one into the digest of what it points at now.

Layouts are told apart by the manifest's ``artifactType`` and config media type, never by tags:

- CNCF ModelPack (``application/vnd.cncf.model.*``): each layer is one file (``.raw``) or a tar of a
  folder (``.tar``, ``.tar+gzip``), named by ``org.cncf.model.filepath`` or
  ``org.opencontainers.image.title``;
- KitOps ModelKits (``application/vnd.kitops.*``): tar layers (optionally gzip), or raw files;
- plain ORAS artifacts: one file per layer, named by ``org.opencontainers.image.title``; a layer marked
  ``io.deis.oras.content.unpack`` is a tar (ORAS's folder upload).

Tar layers are parsed and unpacked in the jail (:mod:`safeload._jail.unpack`), never in this process: only
the members asked for are written (the pinned ones; at pin time every file), each under a number the
worker chose, taken back by descriptor and named by the rule every file name obeys (repository-relative,
no ``..``, no absolute path). An entry that is a link, a device, a FIFO or sparse in any of tar's
flavours fails the whole layer, as does a budget passed (``max_file_size`` per file, and the registry's
``max_unpacked``, ``max_unpacked_files`` and ``max_unpack_ratio``: :class:`~safeload.policy.UnpackBudgets`).
The unpacked files are then pinned and hashed one by one like any other file.

A model-signing bundle attached to the manifest (OCI 1.1 referrers API, or the referrers tag schema
``sha256-<hex>`` where the registry lacks it) is delivered as the entry's signature file, so it is
verified exactly as for the other registries; attached evaluation attestations
(``application/vnd.in-toto+json``) are delivered as the entry's ``*.intoto.jsonl``. An attached
CycloneDX BOM is fetched the same way and, once its schema validates, kept in the store beside the model
as its upstream BOM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from safeload._jail.fetch import Answer, Request
from safeload._jail.launcher import Tier
from safeload._jail.unpack import Unpacked, UnpackRefused, unpack
from safeload._relpath import is_safe_relpath
from safeload._trust.hashing import hash_fd, progress_bar
from safeload._trust.registries import Delivered
from safeload._trust.registries._http import JailedRegistry, ca_bundle
from safeload._trust.registries._oci_auth import auth_file_credentials, bearer_token, parse_challenge
from safeload.errors import IntegrityError, SafeloadError, UnsupportedFormatError, UntrustedSourceError
from safeload.policy import OciRegistrySpec, UnpackBudgets

__all__ = ["ATTESTATION_TYPES", "BOM_TYPES", "SIGNATURE_TYPES", "OciRegistry"]

_MANIFEST_CAP = 4 << 20
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_ACCEPT_MANIFEST = {"Accept": f"{MANIFEST}, {_DOCKER_MANIFEST}"}
_ACCEPT_INDEX = {"Accept": INDEX}
TITLE = "org.opencontainers.image.title"
FILEPATH = "org.cncf.model.filepath"
_UNPACK = "io.deis.oras.content.unpack"
# What a model-signing bundle is published as (the Sigstore bundle format it is written in).
SIGNATURE_TYPES = frozenset(
    {"application/vnd.dev.sigstore.bundle.v0.3+json", "application/vnd.dev.sigstore.bundle+json;version=0.3"}
)
#: What an evaluation attestation (a Sigstore bundle over an in-toto statement) is attached as.
ATTESTATION_TYPES = frozenset({"application/vnd.in-toto+json"})
#: What a CycloneDX BOM is attached as.
BOM_TYPES = frozenset({"application/vnd.cyclonedx+json", "application/vnd.cyclonedx+json;version=1.6"})
# A signature bundle or a BOM is metadata: anything this large is not one.
_ATTACHMENT_CAP = 64 << 20
_DIGEST_HEX = frozenset("0123456789abcdef")
_SCOPE = re.compile(r"^repository:[a-z0-9][a-z0-9._/-]{0,254}:pull$")


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("sha256:")
        and len(value) == 71
        and set(value[7:]) <= _DIGEST_HEX
    )


@dataclass(frozen=True)
class Layer:
    """One layer of an artifact: a file (``path``) or a tar of files (``tar``), by digest."""

    digest: str
    size: int
    media_type: str
    path: str | None
    tar: bool
    gzip: bool


def _descriptor(obj: object, where: str) -> tuple[str, int, str, Mapping[str, object]]:
    if not isinstance(obj, dict):
        raise IntegrityError(f"{where}: a descriptor is not an object")
    digest, size, media = obj.get("digest"), obj.get("size"), obj.get("mediaType")
    if not _is_digest(digest):
        raise IntegrityError(f"{where}: descriptor digest {digest!r} is not sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise IntegrityError(f"{where}: descriptor size {size!r} is not a byte count")
    if not isinstance(media, str):
        raise IntegrityError(f"{where}: descriptor without a mediaType")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise IntegrityError(f"{where}: descriptor annotations are not an object")
    return str(digest), size, media, annotations


def layers_of(manifest: Mapping[str, object], where: str) -> list[Layer]:
    """The artifact's layers, their layout decided by ``artifactType`` / config media type.

    Raises:
        IntegrityError: the manifest is malformed or names a file with an unsafe path.
        UnsupportedFormatError: a layer is compressed with something other than gzip.
    """
    config = manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    artifact = manifest.get("artifactType")
    kind = "oras"
    for marker in (artifact, config_type):
        if isinstance(marker, str) and marker.startswith("application/vnd.cncf.model."):
            kind = "modelpack"
        elif isinstance(marker, str) and marker.startswith("application/vnd.kitops."):
            kind = "kitops"
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise IntegrityError(f"{where}: the manifest has no layers list")
    out: list[Layer] = []
    for item in raw_layers:
        digest, size, media, notes = _descriptor(item, where)
        path = notes.get(FILEPATH) if kind == "modelpack" else None
        path = path if isinstance(path, str) else notes.get(TITLE)
        base = media.split("+", 1)[0]
        compression = media.split("+", 1)[1] if "+" in media else ""
        if kind in ("modelpack", "kitops"):
            tar = base.endswith(".tar")
        else:
            tar = str(notes.get(_UNPACK, "")).lower() == "true"
        if compression not in ("", "gzip") and (tar or kind != "oras"):
            raise UnsupportedFormatError(
                f"{where}: layer {digest} is compressed as {compression!r}; safeload reads plain and gzip "
                "layers"
            )
        if not tar and not isinstance(path, str):
            continue  # not a file (e.g. an ORAS layer without a title): nothing a model entry can name
        if isinstance(path, str):
            path = path.removeprefix("./").rstrip("/") if tar else path
            if not tar and not is_safe_relpath(path):
                raise IntegrityError(f"{where}: layer {digest} names {path!r}, which is not a relative path")
        out.append(
            Layer(
                digest=digest,
                size=size,
                media_type=media,
                path=path if isinstance(path, str) else None,
                tar=tar,
                gzip=compression == "gzip",
            )
        )
    return out


class OciRegistry(JailedRegistry):
    kind = "oci"
    credentials_hint = (
        "log in (docker login writes ~/.docker/config.json; REGISTRY_AUTH_FILE names another) or set "
        "token_env in trust.toml"
    )

    def __init__(self, spec: OciRegistrySpec, *, jail: Tier = "landlock") -> None:
        super().__init__(spec.name, spec.endpoint, spec.redirect_hosts, spec.max_file_bytes, jail=jail)
        self._namespace = spec.namespace
        self._budgets: UnpackBudgets = spec.unpack
        self._token_env = spec.token_env
        self._bearer: str | None = None  # from the registry's token service, once it asked for one

    # ------------------------------------------------------------------------------------- plumbing

    def _credentials(self) -> str | None:
        if self._token_env is not None:
            token = os.environ.get(self._token_env)
            return f"Bearer {token}" if token else None
        return auth_file_credentials(urlsplit(self.endpoint).netloc)

    def _auth(self) -> str | None:
        return f"Bearer {self._bearer}" if self._bearer is not None else self._credentials()

    def authorization(self) -> str | None:
        """The ``Authorization`` value for this registry's endpoint (send it nowhere else), or None."""
        return self._auth()

    def authenticate(self, challenge: str | None, scope: str | None = None) -> bool:
        """Answer a 401's ``WWW-Authenticate``: for a Bearer challenge, get a token from the registry's
        token service (the user's credentials go there only if it is on the registry's own host or its
        redirect_hosts) and use it from now on. False when there is nothing to answer (no challenge,
        another scheme, or a static ``token_env`` token, which is used as it is).

        Raises:
            UntrustedSourceError: the token service is elsewhere, or refuses the credentials.
            IntegrityError: its answer holds no token.
        """
        parsed = parse_challenge(challenge)
        if parsed is None or parsed.scheme != "bearer" or self._token_env is not None:
            return False
        wanted = parsed.params.get("scope")
        if scope is None and wanted is not None and _SCOPE.match(wanted):
            scope = wanted  # what the registry says this request needs (read access to one repository)
        tls = parsed.params.get("realm", "").startswith("https://")
        self._bearer = bearer_token(
            parsed,
            where=self._where(),
            endpoint=self.endpoint,
            redirect_hosts=self._redirect_hosts,
            credentials=self._credentials(),
            scope=scope,
            cadata=ca_bundle() if tls else None,
            jail=self._jail,
        )
        return True

    def _run(
        self,
        requests: Sequence[Request],
        out: Path,
        commit: str | None = None,
        on_output: Callable[[int], None] | None = None,
    ) -> Mapping[str, Answer]:
        answers = dict(super()._run(requests, out, commit, on_output))
        refused = [r for r in requests if answers[r.id].status == 401]
        if refused and self.authenticate(answers[refused[0].id].challenge):
            again = Path(tempfile.mkdtemp(prefix="auth-", dir=out))
            answers.update(super()._run(refused, again, commit, on_output))
        return answers

    def repository_path(self, repo: str) -> str:
        """The registry's repository name of an entry's ``repo`` (namespace prefixed, URL-quoted)."""
        full = f"{self._namespace}/{repo}" if self._namespace else repo
        return "/".join(quote(part, safe="") for part in full.split("/"))

    def _url(self, repo: str, kind: str, reference: str) -> str:
        return f"{self.endpoint}/v2/{self.repository_path(repo)}/{kind}/{quote(reference, safe=':')}"

    def _not_found(self, answer: Answer, what: str) -> SafeloadError:
        return UntrustedSourceError(f"{self._where()}: {what}: not found in the registry")

    def manifest(self, repo: str, digest: str) -> dict[str, object]:
        """The manifest at ``digest``, whose bytes must hash to it.

        Raises:
            UntrustedSourceError: the registry has no such manifest.
            IntegrityError: the bytes hash to another digest, or are not an image manifest.
        """
        what = f"{repo}@{digest}"
        req = Request(
            id="m",
            url=self._url(repo, "manifests", digest),
            max_bytes=_MANIFEST_CAP,
            digest=digest,
            headers=_ACCEPT_MANIFEST,
        )
        raw, _ = self._get(req, f"the manifest of {what}")
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if got != digest:
            raise IntegrityError(
                f"{self._where()}: {what}: the manifest served hashes to {got}, not the pinned digest; "
                "nothing was stored (the registry is lying, or the pin is wrong: re-pin with safeload pin)"
            )
        try:
            doc = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"{self._where()}: {what}: the manifest is not JSON") from None
        if (
            not isinstance(doc, dict)
            or doc.get("schemaVersion") != 2
            or doc.get("mediaType", MANIFEST) not in (MANIFEST, _DOCKER_MANIFEST)
        ):
            raise IntegrityError(f"{self._where()}: {what}: not an OCI image manifest (schemaVersion 2)")
        return doc

    def _blobs(self, repo: str, layers: list[Layer], out: Path, label: str) -> dict[str, Path]:
        """Download ``layers`` (distinct digests) into ``out``; returns digest -> downloaded file."""
        for layer in layers:
            if layer.size > self._max_file_bytes:
                raise IntegrityError(
                    f"{self._where()}: {repo}: layer {layer.digest} is {layer.size} bytes by its descriptor, "
                    f"over this registry's max_file_size ({self._max_file_bytes}); nothing was downloaded"
                )
        unique = list({layer.digest: layer for layer in layers}.values())
        if not unique:
            return {}
        requests = [
            Request(
                id=str(i),
                url=self._url(repo, "blobs", layer.digest),
                max_bytes=layer.size,
                digest=layer.digest,
            )
            for i, layer in enumerate(unique)
        ]
        total = sum(layer.size for layer in unique)
        with progress_bar(f"downloading {label}", total, None) as advance:
            seen = [0]

            def on_output(size: int) -> None:
                if size > seen[0]:
                    advance(size - seen[0])
                    seen[0] = size

            answers = self._run(requests, out, on_output=on_output)
        paths: dict[str, Path] = {}
        for i, layer in enumerate(unique):
            answer = answers[str(i)]
            if not answer.ok or answer.path is None:
                raise self._failure(answer, f"{repo} layer {layer.digest}")
            if answer.size != layer.size:
                raise IntegrityError(
                    f"{self._where()}: {repo}: layer {layer.digest} arrived with {answer.size} bytes, not "
                    f"the {layer.size} its descriptor says; nothing was stored"
                )
            paths[layer.digest] = answer.path
        return paths

    def _check_blob(self, path: Path, layer: Layer, repo: str) -> None:
        os.close(self._open_checked(path, layer, repo))

    def _open_checked(self, path: Path, layer: Layer, repo: str) -> int:
        """A descriptor on the downloaded blob, once its bytes hash to the layer's digest."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            digest, _ = hash_fd(fd)
            if digest != layer.digest:
                raise IntegrityError(
                    f"{self._where()}: {repo}: layer {layer.digest} arrived as {digest}; the registry served "
                    "other bytes than its manifest names, and nothing was stored"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _unpack(
        self, blob: Path, layer: Layer, repo: str, dest: Path, where: str, wanted: Collection[str],
        *, listing: bool = False, written: int = 0,
    ) -> Unpacked:
        """Unpack tar ``layer`` (downloaded to ``blob``) in the jail into ``dest``: the members named in
        ``wanted``, and with ``listing`` the names of all; ``written`` bytes of the artifact's budget are
        spent already.

        Raises:
            IntegrityError: the blob is not the layer's bytes, or the layer holds an unsafe entry or
                passes a budget (:class:`~safeload._jail.unpack.UnpackRefused`, naming the budget).
        """
        fd = self._open_checked(blob, layer, repo)
        try:
            # The jail reads the verified blob through this descriptor; read-only for everyone, it
            # needs no sealed copy (the blob is in this run's private staging folder).
            os.fchmod(fd, 0o444)
            dest.mkdir(mode=0o700)
            budgets = self._budgets
            return unpack(
                fd, dest, gzip=layer.gzip, compressed_size=layer.size, wanted=wanted, listing=listing,
                max_member_bytes=self._max_file_bytes, max_total_bytes=max(0, budgets.max_bytes - written),
                max_members=budgets.max_members, max_ratio=budgets.max_ratio, weakest_jail=self._jail,
            )
        except UnpackRefused as exc:
            raise UnpackRefused(
                f"{where}: tar layer {layer.digest} is refused: {exc}; nothing was stored"
                + self._budget_hint(exc.budget),
                exc.budget,
            ) from None
        finally:
            os.close(fd)

    def _budget_hint(self, budget: str | None) -> str:
        if budget is None:
            return ""
        now = {
            "max_file_size": self._max_file_bytes,
            "max_unpacked": self._budgets.max_bytes,
            "max_unpacked_files": self._budgets.max_members,
            "max_unpack_ratio": self._budgets.max_ratio,
        }[budget]
        return (
            f" (budget {budget} = {now}; if the artifact is trusted to need more, raise {budget} in "
            f"[registries.{self.name}] of trust.toml)"
        )

    # ---------------------------------------------------------------------------------- Registry API

    def deliver(
        self, repo: str, revision: str | None, files: Mapping[str, str | None], staging: Path
    ) -> Delivered:
        """The pinned files of the artifact at manifest digest ``revision``.

        Raises:
            UntrustedSourceError: no digest, or the registry lacks the manifest, a blob or a file.
            IntegrityError: the manifest, a blob or an unpacked file differs from what names it; a tar
                entry is unsafe; an answer broke a header rule or its size.
            UnsupportedFormatError: a layer is compressed with something other than gzip.
        """
        if revision is None or not _is_digest(revision):
            raise UntrustedSourceError(f"registry {self.name!r}: {repo} needs a pinned manifest digest")
        where = f"{self._where()}: {repo}@{revision}"
        layers = layers_of(self.manifest(repo, revision), where)
        raw = {layer.path: layer for layer in layers if not layer.tar and layer.path is not None}
        wanted_raw: dict[str, Layer] = {}
        inside: list[str] = []
        for rel, pin in files.items():
            layer = raw.get(rel)
            if layer is None:
                inside.append(rel)
                continue
            if pin is not None and pin != layer.digest:
                raise IntegrityError(
                    f"{where}: the manifest names {rel} = {layer.digest}, but the policy pins {pin}; nothing "
                    "was downloaded"
                )
            wanted_raw[rel] = layer
        work = Path(tempfile.mkdtemp(prefix="oci-", dir=staging))
        paths: dict[str, Path] = {}
        # A signature is attached to the manifest rather than packed in it; look there first, so that
        # asking for it never downloads the artifact's tar layers.
        for rel in [r for r in inside if r.endswith(".sig")]:
            with contextlib.suppress(_NoSignature):
                paths[rel] = self._signature(repo, revision, work)
                inside.remove(rel)
        for rel in [r for r in inside if r.endswith(".intoto.jsonl")]:
            found = self._attached(repo, revision, ATTESTATION_TYPES, work, _ATTACHMENT_CAP)
            if found:  # every attached attestation, one bundle per line, as the file form holds them
                joined = work / "attestations.intoto.jsonl"
                with open(joined, "xb") as out:
                    for blob in found:
                        out.write(blob.read_bytes().rstrip(b"\n") + b"\n")
                paths[rel] = joined
                inside.remove(rel)
        tars = [layer for layer in layers if layer.tar] if inside else []
        label = f"{self.name}:{repo}@{revision[:19]}"
        blobs = self._blobs(repo, [*wanted_raw.values(), *tars], work, label)
        for rel, layer in wanted_raw.items():
            if files[rel] is None:
                self._check_blob(blobs[layer.digest], layer, repo)  # no pin will check it later
            paths[rel] = blobs[layer.digest]
        if inside:
            unpacked: dict[str, Path] = {}
            written = 0
            for n, layer in enumerate(tars):
                dest = work / f"unpacked-{n}"
                got = self._unpack(blobs[layer.digest], layer, repo, dest, where, inside, written=written)
                for rel, path in got.files.items():
                    if rel in unpacked or rel in raw:
                        raise IntegrityError(f"{where}: {rel!r} is in the artifact twice")
                    unpacked[rel] = path
                    written += os.lstat(path).st_size
            for rel in inside:
                if rel not in unpacked:
                    attached = " and no model-signing signature is attached" if rel.endswith(".sig") else ""
                    raise UntrustedSourceError(f"{where}: the artifact has no file {rel!r}{attached}")
                paths[rel] = unpacked[rel]
        return Delivered(paths=paths, private=True)

    def list_files(self, repo: str, revision: str | None) -> list[str]:
        """Every file of the artifact (tar layers are downloaded and listed).

        Raises:
            as :meth:`deliver`.
        """
        if revision is None or not _is_digest(revision):
            raise UntrustedSourceError(f"registry {self.name!r}: {repo} needs a manifest digest")
        where = f"{self._where()}: {repo}@{revision}"
        layers = layers_of(self.manifest(repo, revision), where)
        names = [layer.path for layer in layers if not layer.tar and layer.path is not None]
        tars = [layer for layer in layers if layer.tar]
        if tars:
            with tempfile.TemporaryDirectory(prefix="safeload-oci-") as tmp:
                blobs = self._blobs(repo, tars, Path(tmp), f"{self.name}:{repo}@{revision[:19]}")
                for n, layer in enumerate(tars):
                    dest = Path(tmp) / f"u{n}"
                    got = self._unpack(blobs[layer.digest], layer, repo, dest, where, (), listing=True)
                    names += got.names
        if len(set(names)) != len(names):
            raise IntegrityError(f"{where}: a file is in the artifact twice")
        return sorted(names)

    def declared_digests(self, repo: str, revision: str, files: Sequence[str]) -> dict[str, str]:
        """The descriptor digests of the artifact's single-file layers (checked against the bytes later).

        Raises:
            UntrustedSourceError: no such repository or manifest.
            IntegrityError: the manifest's bytes differ from ``revision``, or it breaks a rule.
        """
        where = f"{self._where()}: {repo}@{revision}"
        layers = layers_of(self.manifest(repo, revision), where)
        wanted = set(files)
        return {
            layer.path: layer.digest
            for layer in layers
            if not layer.tar and layer.path is not None and layer.path in wanted
        }

    def resolve_revision(self, repo: str, ref: str | None) -> str | None:
        """The digest of the manifest that tag ``ref`` (default ``latest``) points at right now.

        Raises:
            UntrustedSourceError: no such repository or tag.
        """
        tag = ref or "latest"
        req = Request(
            id="t", url=self._url(repo, "manifests", tag), max_bytes=_MANIFEST_CAP, headers=_ACCEPT_MANIFEST
        )
        raw, _ = self._get(req, f"{repo}:{tag}")
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    # ------------------------------------------------------------------------------------ referrers

    def referrers(self, repo: str, digest: str) -> list[Mapping[str, object]]:
        """Descriptors of the artifacts attached to ``digest`` (unverified claims: each is fetched by
        digest and must name ``digest`` as its subject before it is used)."""
        what = f"the referrers of {repo}@{digest}"
        api = Request(
            id="r", url=self._url(repo, "referrers", digest), max_bytes=_MANIFEST_CAP, headers=_ACCEPT_INDEX
        )
        try:
            index, _ = self._json(api, what)
        except UntrustedSourceError:
            # No referrers API (distribution 2.8): the referrers tag schema, an index tagged sha256-<hex>.
            tagged = Request(
                id="r",
                url=self._url(repo, "manifests", "sha256-" + digest[7:]),
                max_bytes=_MANIFEST_CAP,
                headers=_ACCEPT_INDEX,
            )
            try:
                index, _ = self._json(tagged, what)
            except UntrustedSourceError:
                return []
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list):
            raise IntegrityError(f"{self._where()}: {what}: not an image index")
        return [m for m in manifests if isinstance(m, dict)]

    def _attached(self, repo: str, digest: str, types: frozenset[str], work: Path, cap: int) -> list[Path]:
        """The payloads of the artifacts of ``types`` attached to ``digest``: each referrer manifest is
        fetched by digest, must name ``digest`` as its subject and hold one layer, which is downloaded
        capped at its descriptor (and at ``cap``) and hashed against it."""
        where = f"{self._where()}: {repo}@{digest}"
        found: list[Path] = []
        for desc in self.referrers(repo, digest):
            if desc.get("artifactType") not in types:
                continue
            ref_digest, _, _, _ = _descriptor(desc, where)
            manifest = self.manifest(repo, ref_digest)
            subject = manifest.get("subject")
            if not isinstance(subject, dict) or subject.get("digest") != digest:
                continue  # listed under this digest but attached to another: ignored
            attached = manifest.get("layers")
            if not isinstance(attached, list) or len(attached) != 1:
                continue
            d, size, media, _ = _descriptor(attached[0], where)
            if size > cap:
                raise IntegrityError(f"{where}: the attached {media} is {size} bytes, over the {cap} allowed")
            layers = [Layer(digest=d, size=size, media_type=media, path=None, tar=False, gzip=False)]
            blob = self._blobs(repo, layers, work, f"{self.name}:{repo} {media}")[layers[0].digest]
            self._check_blob(blob, layers[0], repo)
            found.append(blob)
        return found

    def _signature(self, repo: str, digest: str, work: Path) -> Path:
        where = f"{self._where()}: {repo}@{digest}"
        found = self._attached(repo, digest, SIGNATURE_TYPES, work, _ATTACHMENT_CAP)
        if not found:
            raise _NoSignature(f"{where}: no model-signing signature is attached to the manifest")
        if len(found) > 1:
            raise UntrustedSourceError(
                f"{where}: {len(found)} signatures are attached; pin the one to use as a file instead"
            )
        return found[0]

    def attached_bom(self, repo: str, revision: str, staging: Path) -> Path | None:
        """The CycloneDX BOM attached to the manifest at ``revision``, downloaded into ``staging`` and
        hashed against its descriptor (not yet schema-checked), or None when none is attached.

        Raises:
            UntrustedSourceError: more than one BOM is attached.
            IntegrityError: an attached BOM's bytes differ from its descriptor, or it is over 64 MiB.
        """
        work = Path(tempfile.mkdtemp(prefix="oci-bom-", dir=staging))
        found = self._attached(repo, revision, BOM_TYPES, work, _ATTACHMENT_CAP)
        if len(found) > 1:
            hashes = {hashlib.sha256(p.read_bytes()).hexdigest() for p in found}
            if len(hashes) > 1:
                raise UntrustedSourceError(
                    f"{self._where()}: {repo}@{revision}: {len(found)} different BOMs are attached; "
                    "safeload keeps one upstream BOM per model"
                )
        return found[0] if found else None


class _NoSignature(UntrustedSourceError):
    """No signature is attached to a manifest (the caller may still find one packed in a layer)."""

