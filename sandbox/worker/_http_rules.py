"""What a registry's HTTP answer may say, checked before a byte of its body is written (stdlib only).

Client libraries derive paths and decisions from response headers: huggingface_hub names its cache blob
after the ``ETag``, trusts ``X-Repo-Commit`` as the revision it got, follows ``Location`` anywhere and
has been known to honour ``Content-Disposition``. A server that lies in any of them must make the fetch
fail, never steer it. The jailed fetch worker applies these rules to every response; the host imports
the same functions for its own checks and tests, so both sides agree on one definition.

Every rule raises :class:`RuleError` with a message that names the header and the value refused.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urljoin, urlsplit

__all__ = [
    "MAX_REDIRECTS",
    "RedirectRefused",
    "RuleError",
    "check_content_disposition",
    "check_etag",
    "host_allowed",
    "is_hex_digest",
    "next_url",
    "origin_of",
]

MAX_REDIRECTS = 10

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# filename= (token or quoted string) and filename*= (RFC 5987 ext-value) parameters.
_DISPOSITION_NAME = re.compile(r"""(?i)(?:^|;)\s*filename(\*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)""")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


class RuleError(Exception):
    """A response broke one of the rules above (the registry lied or is broken)."""


class RedirectRefused(RuleError):
    """A redirect to a host the registry's settings do not allow."""


def _show(value: str) -> str:
    return repr(value[:200])


def is_hex_digest(value: str) -> bool:
    """A git object id (40 hex) or a sha256 (64 hex), lower case: the only shapes an etag may take."""
    return bool(_HEX40.fullmatch(value) or _HEX64.fullmatch(value))


def check_etag(header: str, raw: str) -> str:
    """The digest in an ``ETag``/``X-Linked-Etag`` value (quotes and a weak ``W/`` removed).

    Raises:
        RuleError: the value is anything but a 40- or 64-hex digest (a path, ``..``, a NUL...).
    """
    value = raw.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not is_hex_digest(value):
        raise RuleError(f"{header} {_show(raw)} is not a 40- or 64-hex digest")
    return value


def check_content_disposition(raw: str) -> None:
    """A ``Content-Disposition`` may only name a plain file name: no folder, no ``..``, no NUL.

    Raises:
        RuleError: a ``filename`` or ``filename*`` parameter holds a path or control characters.
    """
    for star, value in _DISPOSITION_NAME.findall(raw):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if star:
            _, _, value = value.partition("''")  # charset'language'percent-encoded
            value = unquote(value, errors="strict") if value else value
        bad = (
            not value
            or value in (".", "..")
            or any(c in value for c in "/\\")
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
        )
        if bad:
            raise RuleError(f"Content-Disposition names {_show(value)}, which is not a plain file name")


def origin_of(url: str) -> str:
    """``scheme://host:port`` of an absolute http(s) URL, with the default port spelt out.

    Raises:
        RuleError: not an absolute http(s) URL, or it carries credentials (``user:pass@``).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RuleError(f"{_show(url)} is not an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise RuleError(f"{_show(url)} carries credentials in the URL")
    host = parts.hostname
    if not _HOST.fullmatch(host if ":" not in host else f"[{host}]"):
        raise RuleError(f"{_show(url)} names an invalid host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RuleError(f"{_show(url)} names an invalid port") from None
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown.lower()}:{port}"


def _split_rule(rule: str) -> tuple[str, int | None]:
    rule = rule.lower()
    if rule.startswith("["):
        name, _, rest = rule[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif rule.count(":") == 1:
        name, _, port = rule.partition(":")
    else:
        name, port = rule, ""
    return name, int(port) if port.isdigit() else None


def host_allowed(host: str, port: int, allowed: list[str] | tuple[str, ...]) -> bool:
    """Whether ``host:port`` matches one of ``allowed``: ``host``, ``host:port`` or ``*.domain[:port]``.

    A rule without a port admits the standard ports (80 and 443) only; another port must be named.
    """
    host = host.lower().strip("[]")
    for rule in allowed:
        name, rport = _split_rule(rule)
        if (port not in (80, 443)) if rport is None else (port != rport):
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]) and len(host) > len(name) - 1:
                return True
        elif host == name:
            return True
    return False


def next_url(current: str, location: str | None, *, allowed: list[str] | tuple[str, ...]) -> str:
    """Where a redirect leads: an absolute http(s) URL on an allowed host, never from https to http.

    Raises:
        RuleError: no ``Location``, one that is not http(s), drops TLS, carries credentials or leads to
            a host outside ``allowed``.
    """
    if not location:
        raise RuleError("a redirect without a Location header")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in location):
        raise RuleError(f"Location {_show(location)} holds whitespace or control characters")
    target = urljoin(current, location)
    origin = origin_of(target)
    if urlsplit(current).scheme == "https" and not origin.startswith("https://"):
        raise RuleError(f"Location {_show(location)} leaves https for plain http")
    scheme_host, _, port = origin.rpartition(":")
    host = scheme_host.split("://", 1)[1]
    if not host_allowed(host, int(port), allowed):
        raise RedirectRefused(
            f"the registry redirected to {host}:{port}, which is neither its endpoint nor in the "
            "registry's redirect_hosts"
        )
    return target
