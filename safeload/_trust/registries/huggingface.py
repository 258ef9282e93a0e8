"""``kind = "huggingface"``: a Hugging Face Hub (or a mirror such as olah), spoken to from the jail.

Every request (file downloads and the three API calls: revision, tree listing, paths-info) runs in the
fetch jail of :mod:`safeload._jail.fetch`: an unprivileged uid of its own, a read-only root, seccomp, and no
network but the TCP connections the host opens for it to this registry's endpoint and its
``redirect_hosts``. huggingface_hub's download code is not used: it names cache files after the
server's ``ETag`` and so lets a lying registry write anywhere on the host before any check runs. Here a
body is written under the request's own id inside the run's staging folder, and the store hashes it
against its pin before anything else sees it.

The rules every answer must meet, before its body is read (:mod:`safeload._sandbox.worker._http_rules`):
``X-Repo-Commit`` equals the pinned commit; ``ETag`` and ``X-Linked-Etag`` are 40- or 64-hex digests,
and an LFS digest that contradicts the pin stops the download; ``Content-Disposition`` names no path;
a redirect goes to an http(s) URL on the endpoint or a ``redirect_hosts`` host, never from https to
http, and carries the token only back to the endpoint itself; a body stops at the size announced
(``Content-Length``, ``X-Linked-Size``) and at ``max_file_size``. Listings must name only
repository-relative paths; one unsafe name fails the whole listing.

The token is the one huggingface_hub would use (``HF_TOKEN`` or the stored login), or the variable named
by ``token_env``; it is sent only to the endpoint's own origin.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, urlencode, urljoin

from safeload._jail.fetch import Answer, Request
from safeload._jail.launcher import Tier
from safeload._relpath import is_safe_relpath
from safeload._trust.hashing import progress_bar
from safeload._trust.registries import Delivered
from safeload._trust.registries._http import API_CAP, JailedRegistry
from safeload.errors import IntegrityError, SafeloadError, UntrustedSourceError
from safeload.policy import HuggingFaceRegistrySpec

__all__ = ["HuggingFaceRegistry"]

_MAX_PAGES = 1000
_PATHS_PER_CALL = 500


class HuggingFaceRegistry(JailedRegistry):
    kind = "huggingface"
    credentials_hint = "set HF_TOKEN (or token_env) to a token with access"

    def __init__(self, spec: HuggingFaceRegistrySpec, *, jail: Tier = "landlock") -> None:
        super().__init__(spec.name, spec.endpoint, spec.redirect_hosts, spec.max_file_bytes, jail=jail)
        self._token_env = spec.token_env

    def _auth(self) -> str | None:
        if self._token_env is not None:
            token = os.environ.get(self._token_env) or None
        else:
            from huggingface_hub import get_token

            found = get_token()
            token = found if isinstance(found, str) and found else None
        return f"Bearer {token}" if token else None

    def _not_found(self, answer: Answer, what: str) -> SafeloadError:
        where = self._where()
        if answer.error_code == "RepoNotFound":
            return UntrustedSourceError(f"{where}: {what}: repository not found (or needs a token)")
        if answer.error_code == "RevisionNotFound":
            return UntrustedSourceError(f"{where}: {what}: revision not found; check the pinned commit")
        return UntrustedSourceError(f"{where}: {what}: not found at the pinned revision")

    def _failure(self, answer: Answer, what: str) -> SafeloadError:
        if answer.kind == "http" and answer.status in (401, 403) and answer.error_code == "GatedRepo":
            return UntrustedSourceError(
                f"{self._where()}: {what} is gated; set HF_TOKEN (or token_env) to a token with access"
            )
        return super()._failure(answer, what)

    def _api(
        self, path: str, what: str, *, commit: str | None = None, form: str | None = None
    ) -> tuple[object, str | None]:
        """One JSON answer from the endpoint (a GET, or a form POST), and its ``Link`` header."""
        url = path if path.startswith(("http://", "https://")) else f"{self.endpoint}{path}"
        method = "POST" if form is not None else "GET"
        req = Request(id="0", url=url, max_bytes=API_CAP, method=method, body=form)
        data, answer = self._json(req, what, commit)
        return data, answer.link

    # ---------------------------------------------------------------------------------- Registry API

    def deliver(
        self, repo: str, revision: str | None, files: Mapping[str, str | None], staging: Path
    ) -> Delivered:
        """Download ``files`` (relative path -> pinned digest or None) at ``revision`` into ``staging``.

        Raises:
            UntrustedSourceError: no revision, or the registry does not have the repo, revision or a file.
            IntegrityError: an answer broke a header rule, or a body ran past its announced size or cap.
            SandboxError: the fetch jail could not run or reported nonsense.
        """
        if revision is None:
            raise UntrustedSourceError(f"registry {self.name!r}: {repo} needs a pinned 40-hex revision")
        names = list(files)
        for rel in names:
            if not is_safe_relpath(rel):
                raise UntrustedSourceError(
                    f"registry {self.name!r}: {rel!r} is not a repository-relative path"
                )
        requests = [
            Request(
                id=str(i),
                url=f"{self.endpoint}/{_repo_path(repo)}/resolve/{quote(revision, safe='')}/{quote(rel)}",
                max_bytes=self._max_file_bytes,
                file=True,
                sha256=_hex(files[rel]),
            )
            for i, rel in enumerate(names)
        ]
        out = Path(tempfile.mkdtemp(prefix="fetch-", dir=staging))
        label = f"downloading {self.name}:{repo}@{revision[:12]}"
        with progress_bar(label, None, None) as advance:
            seen = [0]

            def on_output(total: int) -> None:
                if total > seen[0]:
                    advance(total - seen[0])
                    seen[0] = total

            answers = self._run(requests, out, revision, on_output)
        paths: dict[str, Path] = {}
        for i, rel in enumerate(names):
            answer = answers[str(i)]
            what = f"{repo}@{revision}:{rel}"
            if not answer.ok or answer.path is None:
                raise self._failure(answer, what)
            if answer.commit is not None and answer.commit != revision:
                raise IntegrityError(
                    f"{self._where()}: {what}: served from commit {answer.commit}, not the pinned one"
                )
            paths[rel] = answer.path
        return Delivered(paths=paths, private=True)

    def list_files(self, repo: str, revision: str | None) -> list[str]:
        """Every file in ``repo`` at ``revision``.

        Raises:
            UntrustedSourceError: the repo or revision does not exist.
            IntegrityError: the listing names a path that is not repository-relative (``..``, absolute,
                NUL...), or an answer broke a header rule.
        """
        rev = quote(revision or "main", safe="")
        what = f"{repo}@{revision or 'main'}"
        url: str | None = f"/api/{_api_path(repo)}/tree/{rev}?" + urlencode(
            {"recursive": "true", "expand": "false"}
        )
        out: list[str] = []
        for _ in range(_MAX_PAGES):
            if url is None:
                break
            page, link = self._api(url, f"listing {what}", commit=revision)
            if not isinstance(page, list):
                raise SafeloadError(f"{self._where()}: listing {what}: not a list")
            for item in page:
                if not isinstance(item, dict) or item.get("type") not in ("file", "directory"):
                    raise IntegrityError(f"{self._where()}: listing {what}: an entry is not a file or folder")
                path = item.get("path")
                if not isinstance(path, str) or not is_safe_relpath(path):
                    raise IntegrityError(
                        f"{self._where()}: listing {what} names {path!r}, which is not a repository-relative "
                        "path; the registry is lying or broken, and nothing was fetched"
                    )
                if item["type"] == "file":
                    out.append(path)
            url = self._next_page(link)
        else:
            raise SafeloadError(f"{self._where()}: listing {what}: more than {_MAX_PAGES} pages")
        return sorted(set(out))

    def _next_page(self, link: str | None) -> str | None:
        if not link:
            return None
        for part in link.split(","):
            target, _, params = part.partition(";")
            if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
                url = urljoin(self.endpoint + "/", target.strip().strip("<>"))
                if not url.startswith(self.endpoint + "/"):
                    raise IntegrityError(
                        f"{self._where()}: a listing's next page {url!r} is off the endpoint"
                    )
                return url
        return None

    def resolve_revision(self, repo: str, ref: str | None) -> str | None:
        """The commit id ``ref`` (a branch or tag; None: ``main``) points at right now.

        Raises:
            UntrustedSourceError: the repo or ref does not exist.
            SafeloadError: the answer names no 40-hex commit.
        """
        what = f"{repo}@{ref or 'default branch'}"
        info, _ = self._api(f"/api/{_api_path(repo)}/revision/{quote(ref or 'main', safe='')}", what)
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or len(sha) != 40 or not all(c in "0123456789abcdef" for c in sha):
            raise SafeloadError(f"{self._where()}: {what} did not report a commit id")
        return sha

    def declared_digests(self, repo: str, revision: str, files: Sequence[str]) -> dict[str, str]:
        """The sha256 the server declares for LFS files (a claim, checked against the bytes later).

        Raises:
            UntrustedSourceError: the repo or revision does not exist.
            IntegrityError: an answer names a file not asked about or a digest that is not sha256.
        """
        wanted = set(files)
        out: dict[str, str] = {}
        names = list(files)
        for start in range(0, len(names), _PATHS_PER_CALL):
            chunk = names[start : start + _PATHS_PER_CALL]
            form = urlencode([("paths", p) for p in chunk] + [("expand", "true")])
            url = f"/api/{_api_path(repo)}/paths-info/{quote(revision, safe='')}"
            infos, _ = self._api(url, f"{repo}@{revision}", commit=revision, form=form)
            if not isinstance(infos, list):
                raise SafeloadError(f"{self._where()}: paths-info for {repo}@{revision}: not a list")
            for info in infos:
                if not isinstance(info, dict):
                    continue
                path, lfs = info.get("path"), info.get("lfs")
                if not isinstance(lfs, dict):
                    continue
                oid = lfs.get("oid", lfs.get("sha256"))
                if path not in wanted or not isinstance(oid, str) or len(oid) != 64:
                    raise IntegrityError(
                        f"{self._where()}: paths-info for {repo}@{revision} declares {path!r} = {oid!r}, "
                        "which is not a sha256 of a file asked about"
                    )
                out[str(path)] = "sha256:" + oid.lower()
        return out


def _repo_path(repo: str) -> str:
    return "/".join(quote(part, safe="") for part in repo.split("/"))


def _api_path(repo: str) -> str:
    """The Hub API's path of a repository: ``models/ORG/NAME``, or ``datasets/ORG/NAME`` for a dataset
    (which resolve URLs already name as ``datasets/ORG/NAME``)."""
    if repo.startswith("datasets/"):
        return "datasets/" + _repo_path(repo.removeprefix("datasets/"))
    return "models/" + _repo_path(repo)


def _hex(digest: str | None) -> str | None:
    if digest is not None and digest.startswith("sha256:"):
        return digest[len("sha256:") :]
    return None
