"""``kind = "mlflow"``: an MLflow tracking server's Model Registry, spoken to from the fetch jail.

MLflow checksums nothing: a listing gives only sizes, a download's ETag is an md5 of mtime and size, a
file under an existing version can be overwritten without the version changing, and aliases move. So a
version number is only a locator; what identifies a model is its ``[models]`` entry: the registered
model's name (``repo``), the version (``revision``, digits only), the version's ``source`` (its run
folder or LoggedModel, as ``model-versions/get`` reports it) and every file's sha256 (and, optionally,
size).

Every cold fetch, before any file is downloaded (:meth:`MlflowRegistry.bind`):

1. ``model-versions/get``: the version exists, is ``READY`` and its ``source`` equals the pin;
2. ``model-versions/get-download-uri``: only a host-less ``mlflow-artifacts:/`` URI made of plain path
   segments is accepted (another host, ``file://``, ``..``, percent-encoding: an ``IntegrityError``
   naming it), since the stock client sends the user's credentials to a host named there and copies
   local files for ``file://``;
3. ``GET /api/2.0/mlflow-artifacts/artifacts?path=...``, walked recursively: every name must be a plain
   segment, the listed set must equal the pinned set, and a listed size must equal a pinned size.

Downloads (``.../mlflow-artifacts/artifacts/PATH``) run in the fetch jail of :mod:`safeload._jail.fetch` like
every other registry's; each is capped at its pinned size (else the listed size) and at
``max_file_size``, and the store hashes it against its pin. Credentials (``auth = "basic"``:
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``; ``"token"``: ``MLFLOW_TRACKING_TOKEN``; or,
when the registry names ``credentials = "PATH"``, that file alone, see :func:`read_credentials`) are
sent to the endpoint's origin only; there are no redirect hosts, and a redirect elsewhere is refused
before a connection is made. A 401 says the server refused the credentials sent (or wants some), a 403
that they may not read this model; neither is ever reported as tampering. The mlflow library is never
imported.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlencode

from safeload._jail.fetch import Answer, Request
from safeload._jail.launcher import Tier
from safeload._trust.registries import Delivered
from safeload._trust.registries._http import API_CAP, JailedRegistry
from safeload.errors import IntegrityError, PolicyError, SafeloadError, UntrustedSourceError
from safeload.policy import MlflowRegistrySpec, ModelEntry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["MlflowRegistry", "MlflowVersion", "artifact_root", "read_credentials"]

_API = "/api/2.0/mlflow"
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
_MAX_ENTRIES = 10_000
_MAX_DEPTH = 16
_MAX_CREDENTIALS = 64 << 10


@dataclass(frozen=True)
class MlflowVersion:
    """What the server says about one model version: its ``source`` and run, the artifact folder its
    files live in (relative to the ``mlflow-artifacts`` root), and every file with its listed size."""

    name: str
    version: str
    source: str
    run_id: str | None
    root: str
    sizes: Mapping[str, int]


def read_credentials(path: Path, auth: str, where: str) -> dict[str, str]:
    """The credentials in ``path``: a small TOML file, ``username = "..."`` and ``password = "..."`` for
    ``auth = "basic"``, ``token = "..."`` for ``"token"``. Like ssh with a private key, the file must be a
    regular file (a symbolic link to one is followed, as Kubernetes mounts secrets) owned by the caller or
    root that nobody else may read or write.

    Raises:
        PolicyError: the file cannot be read, others may read or write it, it is not TOML, or it lacks
            the keys ``auth`` needs; the message says how to fix it.
    """
    where = f"{where}: credentials file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise PolicyError(
            f"{where}: cannot read the credentials file ({exc.strerror}); create it (mode 600) or fix "
            "'credentials' in trust.toml"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"{where}: is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise PolicyError(
                f"{where}: is readable by others (mode {mode:04o}); credentials must be private to their "
                f"owner: run `chmod 600 {path}` (for a Kubernetes secret, defaultMode: 0400)"
            )
        if st.st_uid not in (os.geteuid(), 0):
            raise PolicyError(
                f"{where}: belongs to uid {st.st_uid}, neither this user ({os.geteuid()}) nor root; "
                f"run `chown {os.geteuid()} {path}`"
            )
        raw = os.read(fd, _MAX_CREDENTIALS + 1)
    finally:
        os.close(fd)
    try:
        data = tomllib.loads(raw[:_MAX_CREDENTIALS].decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise PolicyError(
            f'{where}: is not TOML like `username = "reader"` and `password = "..."` (or `token = "..."`)'
        ) from None
    keys = ("username", "password") if auth == "basic" else ("token",)
    missing = [k for k in keys if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise PolicyError(
            f"{where}: auth = {auth!r} needs {' and '.join(repr(k) for k in keys)} in it (as strings); "
            f"missing: {', '.join(missing)}"
        )
    return {k: str(data[k]) for k in keys}


def _plain(path: str) -> bool:
    return bool(path) and all(_SEGMENT.match(seg) and seg not in (".", "..") for seg in path.split("/"))


def artifact_root(uri: object, where: str) -> str:
    """The artifact folder a ``get-download-uri`` answer names, relative to the ``mlflow-artifacts``
    root: only ``mlflow-artifacts:/A/B/...`` (or ``mlflow-artifacts:///A/B/...``) with plain segments.

    Raises:
        IntegrityError: anything else (another host, another scheme such as ``file://``, ``..``, an
            encoded or empty segment), named in the message.
    """
    text = uri if isinstance(uri, str) else repr(uri)
    rest: str | None = None
    if isinstance(uri, str):
        if uri.startswith("mlflow-artifacts:///"):
            rest = uri[len("mlflow-artifacts:///") :]
        elif uri.startswith("mlflow-artifacts:/") and not uri.startswith("mlflow-artifacts://"):
            rest = uri[len("mlflow-artifacts:/") :]
    if rest is None or not _plain(rest.rstrip("/")):
        raise IntegrityError(
            f"{where}: the server names the files' location {text[:300]!r}; only a host-less "
            "'mlflow-artifacts:/' URI with plain path segments is accepted (no other host, no file://, no "
            "'..', no encoded characters). Nothing was fetched; the server is lying or misconfigured"
        )
    return rest.rstrip("/")


class MlflowRegistry(JailedRegistry):
    kind = "mlflow"
    credentials_hint = (
        'set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (auth = "basic") or '
        'MLFLOW_TRACKING_TOKEN (auth = "token") to credentials with READ on the model and its experiment'
    )

    def __init__(
        self,
        spec: MlflowRegistrySpec,
        *,
        jail: Tier = "landlock",
        bound: MlflowVersion | None = None,
        pins: ModelEntry | None = None,
    ) -> None:
        super().__init__(spec.name, spec.endpoint, (), spec.max_file_bytes, jail=jail)
        self._spec = spec
        self._bound = bound
        self._pins = pins

    def _credentials_from(self) -> str:
        """Where this registry's credentials come from, for messages."""
        if self._spec.credentials is not None:
            return f"the credentials file {self._spec.credentials}"
        if self._spec.auth == "basic":
            return "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
        return "MLFLOW_TRACKING_TOKEN"

    def _auth(self) -> str | None:
        """The ``Authorization`` value: from the policy's credentials file when it names one, else from
        the MLflow environment variables.

        Raises:
            PolicyError: no credentials are set where ``auth`` says, or the file is refused.
        """
        auth, where = self._spec.auth, f"registries.{self.name}"
        if auth == "none":
            return None
        if self._spec.credentials is not None:
            found = read_credentials(self._spec.credentials, auth, where)
            user, password, token = found.get("username"), found.get("password"), found.get("token")
        else:
            user = os.environ.get("MLFLOW_TRACKING_USERNAME")
            password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
            token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if auth == "basic":
            if not user or password is None:
                raise PolicyError(
                    f'{where}: auth = "basic" and no credentials: set MLFLOW_TRACKING_USERNAME and '
                    f'MLFLOW_TRACKING_PASSWORD, or name a file holding them with credentials = "PATH" in '
                    f'[{where}] (TOML: username = "...", password = "..."; mode 600)'
                )
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        if not token:
            raise PolicyError(
                f'{where}: auth = "token" and no credentials: set MLFLOW_TRACKING_TOKEN, or name a file '
                f'holding it with credentials = "PATH" in [{where}] (TOML: token = "..."; mode 600)'
            )
        return f"Bearer {token}"

    def _failure(self, answer: Answer, what: str) -> SafeloadError:
        if answer.kind == "http" and answer.status == 401:
            if self._spec.auth == "none":
                return UntrustedSourceError(
                    f"{self._where()}: {what}: the server asks for credentials (HTTP 401) and this registry "
                    f'sends none; set auth = "basic" (MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD) or '
                    f'"token" (MLFLOW_TRACKING_TOKEN) in [registries.{self.name}], or credentials = "PATH"'
                )
            return UntrustedSourceError(
                f"{self._where()}: {what}: the registry refused the credentials (HTTP 401) from "
                f"{self._credentials_from()}; check the user name and password (or token) there. Nothing "
                "was fetched"
            )
        if answer.kind == "http" and answer.status == 403:
            return UntrustedSourceError(
                f"{self._where()}: {what}: the registry accepted the credentials from "
                f"{self._credentials_from() if self._spec.auth != 'none' else 'nowhere (auth = none)'} but "
                "they may not read this (HTTP 403); an admin must grant READ on the registered model and "
                "on the experiment that holds its files"
            )
        if answer.kind in ("announced", "cap"):
            details = dict(answer.details or {})
            size = details.get("limit", details.get("cap"))
            return IntegrityError(
                f"{self._where()}: {what}: the server sends more than {size} bytes, the file's pinned (or "
                "listed) size; the download was stopped and nothing was stored. The server is lying, or "
                "the file was replaced under the pinned version"
            )
        return super()._failure(answer, what)

    def _api(self, path: str, query: Mapping[str, str], what: str) -> dict[str, object]:
        return self._apis([(path, query)], what)[0]

    def _apis(self, calls: Sequence[tuple[str, Mapping[str, str]]], what: str) -> list[dict[str, object]]:
        """The JSON objects ``calls`` (path, query) answer, asked in one run of the fetch jail."""
        requests = [
            Request(id=str(i), url=f"{self.endpoint}{path}?{urlencode(query)}", max_bytes=API_CAP)
            for i, (path, query) in enumerate(calls)
        ]
        out: list[dict[str, object]] = []
        with tempfile.TemporaryDirectory(prefix="safeload-fetch-") as tmp:
            answers = self._run(requests, Path(tmp))
            for req in requests:
                answer = answers[req.id]
                if not answer.ok or answer.path is None:
                    raise self._failure(answer, what)
                try:
                    data = json.loads(answer.path.read_bytes())
                except ValueError:
                    raise SafeloadError(f"{self._where()}: {what}: the answer is not JSON") from None
                if not isinstance(data, dict):
                    raise SafeloadError(f"{self._where()}: {what}: the answer is not a JSON object")
                out.append(data)
        return out

    # ------------------------------------------------------------------------------ what the server says

    def describe(self, name: str, version: str) -> MlflowVersion:
        """The version's source, run and files, as the server reports them now (checked for shape).

        Raises:
            UntrustedSourceError: the model or version does not exist, or is not READY.
            IntegrityError: the download URI or a listed name breaks the rules in the module's docstring.
        """
        what = f"model {name!r} version {version}"
        if not _VERSION.match(version):
            raise UntrustedSourceError(f"{self._where()}: {what}: a version is a number")
        query = {"name": name, "version": version}
        got, uri = self._apis(
            [(f"{_API}/model-versions/get", query), (f"{_API}/model-versions/get-download-uri", query)], what
        )
        info = got.get("model_version")
        if not isinstance(info, dict) or str(info.get("version")) != version or info.get("name") != name:
            raise IntegrityError(f"{self._where()}: {what}: the answer describes another model version")
        status = info.get("status", "READY")
        if status != "READY":
            raise UntrustedSourceError(f"{self._where()}: {what} is {status!r}, not READY")
        source = info.get("source")
        if not isinstance(source, str) or not source:
            raise IntegrityError(f"{self._where()}: {what}: the answer names no source")
        run_id = info.get("run_id")
        root = artifact_root(uri.get("artifact_uri"), f"{self._where()}: {what}")
        sizes = self._walk(root, what)
        return MlflowVersion(
            name=name, version=version, source=source, run_id=run_id if isinstance(run_id, str) else None,
            root=root, sizes=MappingProxyType(sizes),
        )  # fmt: skip

    def _walk(self, root: str, what: str) -> dict[str, int]:
        """Every file under ``root`` with its listed size: the folders of one depth listed in one jail run."""
        out: dict[str, int] = {}
        level: list[str] = [""]
        for depth in range(_MAX_DEPTH + 2):
            if not level:
                return out
            if depth > _MAX_DEPTH:
                raise IntegrityError(
                    f"{self._where()}: listing {what}: folders nested deeper than {_MAX_DEPTH}"
                )
            pages = self._apis(
                [(_ARTIFACTS, {"path": f"{root}/{rel}" if rel else root}) for rel in level], f"listing {what}"
            )
            level = self._read_pages(level, pages, what, out)
        return out

    def _read_pages(
        self, folders: list[str], pages: list[dict[str, object]], what: str, out: dict[str, int]
    ) -> list[str]:
        """Add the files ``pages`` (the listings of ``folders``) name to ``out``; return their subfolders."""
        pending: list[str] = []
        for rel, page in zip(folders, pages, strict=True):
            files = page.get("files", [])
            if not isinstance(files, list):
                raise SafeloadError(f"{self._where()}: listing {what}: 'files' is not a list")
            for item in files:
                if not isinstance(item, dict):
                    raise IntegrityError(f"{self._where()}: listing {what}: an entry is not an object")
                name = item.get("path")
                if not isinstance(name, str) or not _plain(name) or "/" in name:
                    raise IntegrityError(
                        f"{self._where()}: listing {what} names {name!r}, which is not a plain file name; "
                        "the server is lying or broken, and nothing was fetched"
                    )
                child = f"{rel}/{name}" if rel else name
                if item.get("is_dir"):
                    pending.append(child)
                    continue
                size = item.get("file_size", 0)
                if isinstance(size, str) and size.isdigit():
                    size = int(size)
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise IntegrityError(f"{self._where()}: listing {what}: {child} has size {size!r}")
                out[child] = size
                if len(out) > _MAX_ENTRIES:
                    raise IntegrityError(f"{self._where()}: listing {what}: more than {_MAX_ENTRIES} files")
        if len(pending) > _MAX_ENTRIES:
            raise IntegrityError(f"{self._where()}: listing {what}: more than {_MAX_ENTRIES} folders")
        return pending

    # --------------------------------------------------------------------------------- Registry API

    def bind(self, entry: ModelEntry) -> MlflowRegistry:
        """This registry, checked against ``entry`` for one cold fetch: the server's version has the
        pinned source, and lists exactly the pinned files (at their pinned sizes, where pinned).

        Raises:
            UntrustedSourceError: the version does not exist (or is not READY).
            IntegrityError: the source, the file set or a size differs from the pin, or the server's
                answers break a rule; the message names what differs.
        """
        if entry.revision is None:
            raise UntrustedSourceError(f"registry {self.name!r}: {entry.repo} needs a pinned version")
        seen = self.describe(entry.repo, entry.revision)
        label = f"{self._where()}: {entry.repo} version {entry.revision}"
        if seen.source != entry.source:
            raise IntegrityError(
                f"{label}: the server says its source is {seen.source!r}, but the entry pins source = "
                f"{entry.source!r}; the version now points at other files. Re-pin only if that is intended"
            )
        if entry.run_id is not None and seen.run_id != entry.run_id:
            raise IntegrityError(
                f"{label}: the server says its run is {seen.run_id!r}, but the entry pins run_id = "
                f"{entry.run_id!r}; the version now comes from another run. Re-pin only if that is intended"
            )
        listed, pinned = set(seen.sizes), set(entry.files)
        if listed != pinned:
            extra, missing = sorted(listed - pinned), sorted(pinned - listed)
            raise IntegrityError(
                f"{label}: the server lists files that differ from the pinned set (not pinned: "
                f"{', '.join(extra) or 'none'}; pinned but missing: {', '.join(missing) or 'none'}); nothing "
                "was fetched"
            )
        for rel, size in entry.sizes.items():
            if seen.sizes[rel] != size:
                raise IntegrityError(
                    f"{label}: {rel} is listed as {seen.sizes[rel]} bytes but pinned at {size}; nothing was "
                    "fetched"
                )
        return MlflowRegistry(self._spec, jail=self._jail, bound=seen, pins=entry)

    def deliver(
        self, repo: str, revision: str | None, files: Mapping[str, str | None], staging: Path
    ) -> Delivered:
        """Download ``files`` of the bound version into ``staging``, each capped at its pinned size.

        Raises:
            SafeloadError: the registry was not bound to this entry first (:meth:`bind`).
            IntegrityError: a body ran past its cap, or an answer broke a rule.
            UntrustedSourceError: a file is gone, or access was refused.
        """
        seen, pins = self._bound, self._pins
        if seen is None or pins is None or seen.name != repo or seen.version != revision:
            raise SafeloadError(f"registry {self.name!r}: deliver() needs bind(entry) for {repo} first")
        names = list(files)
        for rel in names:
            if rel not in seen.sizes or not _plain(rel):
                raise IntegrityError(f"{self._where()}: {rel!r} is not among the version's listed files")
        requests = [
            Request(
                id=str(i),
                url=f"{self.endpoint}{_ARTIFACTS}/{seen.root}/{rel}",
                max_bytes=min(pins.sizes.get(rel, seen.sizes[rel]), self._max_file_bytes),
            )
            for i, rel in enumerate(names)
        ]
        out = Path(tempfile.mkdtemp(prefix="fetch-", dir=staging))
        answers = self._run(requests, out)
        paths: dict[str, Path] = {}
        for i, rel in enumerate(names):
            answer = answers[str(i)]
            if not answer.ok or answer.path is None:
                raise self._failure(answer, f"{repo} version {revision}: {rel}")
            paths[rel] = answer.path
        return Delivered(paths=paths, private=True)

    def list_files(self, repo: str, revision: str | None) -> list[str]:
        """Every file of model ``repo`` version ``revision``, as the server lists them now."""
        if revision is None:
            raise UntrustedSourceError(f"registry {self.name!r}: {repo} needs a version")
        return sorted(self.describe(repo, revision).sizes)

    def resolve_revision(self, repo: str, ref: str | None) -> str | None:
        """The version ``ref`` names: a version number as is, an alias as the server resolves it now
        (for pinning only: a pinned entry never consults an alias).

        Raises:
            UntrustedSourceError: no ref, or the alias does not exist.
        """
        if ref is None:
            raise UntrustedSourceError(f"registry {self.name!r}: {repo} needs a version or an alias")
        if _VERSION.match(ref):
            return ref
        what = f"model {repo!r} alias {ref!r}"
        got = self._api(f"{_API}/registered-models/alias", {"name": repo, "alias": ref}, what)
        info = got.get("model_version")
        version = str(info.get("version")) if isinstance(info, dict) else ""
        if not _VERSION.match(version):
            raise SafeloadError(f"{self._where()}: {what} did not name a version")
        return version
