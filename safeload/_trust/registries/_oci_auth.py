"""Credentials for OCI registries: the user's auth file, and the Docker token protocol.

Most registries (Docker Hub, GHCR, Harbor, Quay, distribution with ``auth: token``) answer an
unauthenticated request with ``401`` and ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``;
the client then asks the realm for a short-lived token, sending the user's credentials there, and
retries with ``Authorization: Bearer <token>``. The realm is named by the registry's answer, so a lying
registry could name a host of its own to collect the password: the realm is held to the rule a redirect
is, the registry's own origin or one of its ``redirect_hosts``, never from https down to http. The token
request runs in the fetch jail like every other request.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from safeload._jail.fetch import Request, Site, fetch
from safeload._jail.launcher import Tier
from safeload._sandbox.worker._http_rules import host_allowed
from safeload._trust.registries._http import unavailable
from safeload.errors import IntegrityError, RegistryUnavailableError, SafeloadError, UntrustedSourceError

__all__ = ["Challenge", "auth_file_credentials", "bearer_token", "parse_challenge"]

_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{1,16384}$")
_TOKEN_ANSWER_CAP = 1 << 20


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lower-case) and parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    """The first challenge of a ``WWW-Authenticate`` value, or None when it does not parse."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        quoted, bare = m.group(2), m.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[m.group(1).lower()] = value
        pos = m.end()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", scheme):
        return None
    return Challenge(scheme=scheme.lower(), params=params)


def auth_file_credentials(host: str) -> str | None:
    """``Authorization`` for ``host`` from the user's registry auth file, as podman and docker keep it:
    ``REGISTRY_AUTH_FILE``, else ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (the
    first that exists is the only one read)."""
    candidates = [os.environ.get("REGISTRY_AUTH_FILE")]
    if os.environ.get("DOCKER_CONFIG"):
        candidates.append(os.path.join(os.environ["DOCKER_CONFIG"], "config.json"))
    candidates.append(os.path.expanduser("~/.docker/config.json"))
    for path in candidates:
        if not path or not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                auths = json.load(fh).get("auths", {})
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(auths, dict):
            return None
        for key in (host, f"https://{host}", f"http://{host}"):
            entry = auths.get(key)
            if isinstance(entry, dict):
                token = entry.get("registrytoken")
                if isinstance(token, str) and token:
                    return f"Bearer {token}"
                basic = entry.get("auth")
                if isinstance(basic, str) and basic:
                    with contextlib.suppress(ValueError):
                        base64.b64decode(basic, validate=True)
                        return f"Basic {basic}"
        return None
    return None


def _realm_allowed(realm: str, endpoint: str, redirect_hosts: tuple[str, ...]) -> bool:
    """The rule a redirect is held to: the endpoint's own origin, or a redirect host, and never from
    https down to http."""
    r, e = urlsplit(realm), urlsplit(endpoint)
    if r.scheme not in ("http", "https") or not r.hostname or r.username or r.password:
        return False
    if e.scheme == "https" and r.scheme != "https":
        return False
    try:
        port = r.port or (443 if r.scheme == "https" else 80)
        own = e.port or (443 if e.scheme == "https" else 80)
    except ValueError:
        return False
    if (r.scheme, r.hostname, port) == (e.scheme, e.hostname, own):
        return True
    return host_allowed(r.hostname, port, redirect_hosts)


def bearer_token(
    challenge: Challenge,
    *,
    where: str,
    endpoint: str,
    redirect_hosts: tuple[str, ...],
    credentials: str | None,
    scope: str | None,
    cadata: str | None,
    jail: Tier = "landlock",
) -> str:
    """Ask the challenge's realm for a token (``credentials``, a ``Basic`` value, sent to the realm only
    when it passes the realm rule); returns the token.

    Raises:
        UntrustedSourceError: the realm is not on the registry's host or its redirect_hosts, or it
            refuses the credentials.
        IntegrityError: the realm's answer is not a token.
        RegistryUnavailableError: the realm cannot be reached, or fails (5xx).
        SafeloadError: the realm answers with another error.
    """
    realm = challenge.params.get("realm", "")
    if not _realm_allowed(realm, endpoint, redirect_hosts):
        shown = realm[:200] or "(none)"
        raise UntrustedSourceError(
            f"{where}: the registry asks for credentials to be sent to {shown!r}, which is neither its own "
            "origin nor one of its redirect_hosts (and never https to http); nothing was sent there. If "
            "that really is the registry's token service, add its host:port to redirect_hosts"
        )
    query = {k: v for k, v in (("service", challenge.params.get("service")), ("scope", scope)) if v}
    url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
    parts = urlsplit(realm)
    site = Site(
        endpoint=f"{parts.scheme}://{parts.netloc}",
        auth=credentials if credentials is not None and credentials.startswith("Basic ") else None,
        cadata=cadata,
        weakest_jail=jail,
    )
    with tempfile.TemporaryDirectory(prefix="safeload-token-") as tmp:
        req = Request(id="t", url=url, max_bytes=_TOKEN_ANSWER_CAP, headers={"Accept": "application/json"})
        answer = fetch([req], Path(tmp), site)["t"]
        if answer.status in (401, 403):
            raise UntrustedSourceError(
                f"{where}: the registry's token service refused "
                + ("the credentials" if site.auth else "an anonymous token")
                + f" (HTTP {answer.status}); log in (docker login writes ~/.docker/config.json; "
                "REGISTRY_AUTH_FILE names another) or set token_env in trust.toml"
            )
        if not answer.ok or answer.path is None:
            error = RegistryUnavailableError if unavailable(answer) else SafeloadError
            raise error(f"{where}: could not get a token from {realm[:200]}: {answer.message}")
        raw = answer.path.read_bytes()
    try:
        doc = json.loads(raw)
    except ValueError:
        raise IntegrityError(f"{where}: the token service's answer is not JSON") from None
    token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise IntegrityError(f"{where}: the token service's answer holds no usable token")
    return token
