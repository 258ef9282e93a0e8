"""What the HTTP registries (Hub, OCI) share: their only way to the network is the fetch jail.

Each registry builds :class:`safeload._jail.fetch.Request` values for its protocol and hands them to
:meth:`JailedRegistry._run`; the answers come back as data, with bodies in a private staging folder.
This module turns a failed answer into the typed error a user can act on, and reads JSON answers.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from safeload._jail.fetch import Answer, Request, Site, fetch
from safeload._jail.launcher import Tier
from safeload._trust.registries import Registry
from safeload.errors import IntegrityError, RegistryUnavailableError, SafeloadError, UntrustedSourceError

__all__ = ["JailedRegistry", "ca_bundle", "unavailable"]

API_CAP = 64 << 20  # one JSON answer (a listing page, a manifest, model info)


def unavailable(answer: Answer) -> bool:
    """Whether a failed answer says the registry could not be reached rather than that it refused or lied:
    no connection, DNS, TLS, a timeout or a cut-off body (the worker's ``network`` failures), a server
    error, or a server asking to be asked later (429)."""
    if answer.kind == "network":
        return True
    status = answer.status
    return answer.kind == "http" and status is not None and (status >= 500 or status == 429)


class JailedRegistry(Registry):
    """Base of the registries that fetch over HTTP from the jail."""

    name: str
    endpoint: str
    kind: str

    # What to do when the registry refuses access (appended to the 401/403 error).
    credentials_hint = "set token_env in trust.toml to a variable holding a token with access"

    def __init__(
        self, name: str, endpoint: str, redirect_hosts: tuple[str, ...], max_file_bytes: int, *,
        jail: Tier = "landlock",
    ) -> None:
        self.name = name
        self._jail = jail
        self.endpoint = endpoint
        self._redirect_hosts = redirect_hosts
        self._max_file_bytes = max_file_bytes

    def _auth(self) -> str | None:
        """The ``Authorization`` value for the endpoint (never sent anywhere else), or None."""
        return None

    def _where(self) -> str:
        return f"registry {self.name!r} ({self.endpoint})"

    def _site(self, commit: str | None) -> Site:
        tls = self.endpoint.startswith("https://") or bool(self._redirect_hosts)
        return Site(
            endpoint=self.endpoint,
            redirect_hosts=self._redirect_hosts,
            auth=self._auth(),
            commit=commit,
            cadata=ca_bundle() if tls else None,
            weakest_jail=self._jail,
        )

    def _run(
        self,
        requests: Sequence[Request],
        out: Path,
        commit: str | None = None,
        on_output: Callable[[int], None] | None = None,
    ) -> Mapping[str, Answer]:
        return fetch(requests, out, self._site(commit), on_output=on_output)

    def _not_found(self, answer: Answer, what: str) -> SafeloadError:
        return UntrustedSourceError(f"{self._where()}: {what}: not found at the pinned revision")

    def _unreachable(self, answer: Answer, what: str) -> RegistryUnavailableError:
        """A transport failure or server error: nothing the registry sent was used."""
        fix = (
            "the server failed; try again later"
            if answer.kind == "http"
            else f"check that [registries.{self.name}] endpoint is right and reachable from this host "
            "(network, proxy, TLS certificates), then try again"
        )
        return RegistryUnavailableError(f"{self._where()}: could not fetch {what}: {answer.message}; {fix}")

    def _failure(self, answer: Answer, what: str) -> SafeloadError:
        """The typed error for a failed answer: what happened and what to do about it."""
        where = self._where()
        details = dict(answer.details or {})
        if answer.kind == "http":
            if answer.status in (401, 403):
                return UntrustedSourceError(
                    f"{where}: {what}: access refused (HTTP {answer.status}); {self.credentials_hint}"
                )
            if answer.status == 404:
                return self._not_found(answer, what)
            if unavailable(answer):
                return self._unreachable(answer, what)
            return SafeloadError(f"{where}: could not fetch {what}: {answer.message}")
        if answer.kind == "announced":
            return IntegrityError(
                f"{where}: {what}: the server announces {details.get('announced')} bytes, over this "
                f"registry's max_file_size ({details.get('limit')} bytes); nothing was downloaded. Raise "
                "max_file_size in trust.toml if the file is really that large."
            )
        if answer.kind == "cap":
            announced = details.get("why") == "announced"
            why = "its announced size" if announced else "this registry's max_file_size"
            return IntegrityError(
                f"{where}: {what}: the server sent more than {details.get('cap')} bytes ({why}); the "
                "download was stopped and nothing was stored"
            )
        if answer.kind == "rule":
            return IntegrityError(
                f"{where}: {what}: the registry's answer was refused before its body was read: "
                f"{answer.message}. Nothing was stored; the registry or something between it and you is "
                "lying or broken"
            )
        if answer.kind == "redirect":
            return UntrustedSourceError(
                f"{where}: {what}: {answer.message}. Nothing was fetched from it; if that host really serves "
                f"this registry's files, add it to [registries.{self.name}] redirect_hosts"
            )
        if unavailable(answer):
            return self._unreachable(answer, what)
        return SafeloadError(f"{where}: could not fetch {what}: {answer.message}")

    def _get(self, req: Request, what: str, commit: str | None = None) -> tuple[bytes, Answer]:
        """One small answer's body (read whole; ``req.max_bytes`` caps it) and the answer itself."""
        with tempfile.TemporaryDirectory(prefix="safeload-fetch-") as tmp:
            answer = self._run([req], Path(tmp), commit)[req.id]
            if not answer.ok or answer.path is None:
                raise self._failure(answer, what)
            return answer.path.read_bytes(), answer

    def _json(self, req: Request, what: str, commit: str | None = None) -> tuple[object, Answer]:
        raw, answer = self._get(req, what, commit)
        try:
            return json.loads(raw), answer
        except ValueError:
            raise SafeloadError(f"{self._where()}: {what}: the answer is not JSON") from None


def ca_bundle() -> str | None:
    """The CA certificates TLS is checked against inside the jail, which has no /etc/ssl of its own:
    ``SSL_CERT_FILE`` or ``REQUESTS_CA_BUNDLE`` when set, else the system bundle, else certifi's."""
    candidates = [os.environ.get("SSL_CERT_FILE"), os.environ.get("REQUESTS_CA_BUNDLE")]
    candidates.append(ssl.get_default_verify_paths().cafile)
    try:
        import certifi

        candidates.append(certifi.where())
    except ImportError:
        pass
    for path in candidates:
        if path and os.path.isfile(path):
            with open(path, encoding="ascii", errors="replace") as fh:
                return fh.read(16 << 20)
    return None
