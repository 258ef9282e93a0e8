"""Fetch mode: HTTP downloads inside the jail, over connections the host hands in (stdlib only).

The jail has no network: its network namespace is empty and the seccomp filter refuses every socket
family but AF_UNIX. The host passes one end of a ``SOCK_SEQPACKET`` pair (``broker_fd`` in the job); to
open a connection the worker sends ``{"host": ..., "port": ...}`` and receives either a connected TCP
socket (SCM_RIGHTS) or a refusal. The host decides which hosts may be reached and resolves their names;
the worker never opens a socket of its own.

The job (``/in/artifact``, JSON) lists requests; each successful body is written to ``/out/body-<id>``,
created with ``O_EXCL | O_NOFOLLOW`` under the *host's* request id, never under a name the server
chose. Every response is checked by :mod:`._http_rules` before its body is read; a response from the
registry's own origin must also carry the pinned commit (when it names one) and hex etags, and an LFS
etag that contradicts the pinned sha256 stops the download before it starts. Bodies are counted as they
arrive and cut off past the announced size or the cap. Credentials go only to the registry's origin:
a redirect to anywhere else is followed without them, and only to hosts the job allows.

``/out/result.json`` reports each request: ``{"id", "ok": true, "status", "size", "commit", "etag",
"link", "error_code"}`` or ``{"id", "ok": false, "kind": "http" | "rule" | "cap" | "announced" |
"redirect" | "network", "status", "message", "error_code"}``. The host treats all of it as untrusted data.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from urllib.parse import urlsplit

from ._common import open_input
from ._http_rules import (
    MAX_REDIRECTS,
    RedirectRefused,
    RuleError,
    check_content_disposition,
    check_etag,
    next_url,
    origin_of,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any

_BLOCK = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)
_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "host"})
_USER_AGENT = "safeload (huggingface_hub-compatible; jailed fetch)"


class _Failure(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None, **extra: object) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.extra = extra


class _Broker:
    """The host's end of the connection hand-over; one request in flight at a time."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._lock = threading.Lock()

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        with self._lock:
            self._sock.sendall(json.dumps({"host": host, "port": port}).encode())
            msg, fds, _, _ = socket.recv_fds(self._sock, 4096, 1)
        if not fds:
            try:
                why = str(json.loads(msg).get("error", "refused"))
            except ValueError:
                why = "refused"
            raise _Failure("network", f"no connection to {host}:{port}: {why}")
        conn = socket.socket(fileno=fds[0])
        conn.settimeout(timeout)
        return conn


class _Connection(http.client.HTTPConnection):
    def __init__(
        self, broker: _Broker, scheme: str, host: str, port: int, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._broker = broker
        self._scheme = scheme
        self._tls = tls

    def connect(self) -> None:
        sock = self._broker.connect(self.host, self.port, self.timeout or 60.0)
        if self._scheme == "https":
            assert self._tls is not None
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


class _Job:
    def __init__(self, spec: dict[str, Any], out_dir: str) -> None:
        self.out_dir = out_dir
        self.origin = origin_of(spec["origin"])
        self.hosts: list[str] = list(spec["hosts"])
        auth = spec.get("auth")
        self.auth: str | None = auth if isinstance(auth, str) and auth else None
        self.commit: str | None = spec.get("commit")
        self.stall_s = float(spec.get("stall_s", 60))
        self.broker = _Broker(int(spec["broker_fd"]))
        cadata = spec.get("cadata")
        self.cadata: str | None = cadata if isinstance(cadata, str) and cadata else None
        self._tls: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()

    def tls_for(self, scheme: str) -> ssl.SSLContext | None:
        if scheme != "https":
            return None
        with self._tls_lock:
            if self._tls is None:
                self._tls = _tls_context(self.cadata)
            return self._tls


def _tls_context(cadata: str | None) -> ssl.SSLContext:
    import ssl

    ctx = ssl.create_default_context(cadata=cadata) if cadata else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _check_registry_answer(
    job: _Job, req: dict[str, Any], resp: http.client.HTTPResponse
) -> dict[str, str]:
    """Rules for an answer from the registry's own origin; returns what the result records."""
    seen: dict[str, str] = {}
    commit = resp.getheader("X-Repo-Commit")
    if commit is not None:
        commit = commit.strip()
        want = job.commit
        if want is not None and commit != want:
            raise RuleError(f"X-Repo-Commit {commit[:80]!r} is not the pinned commit {want}")
        if want is None and not (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)):
            raise RuleError(f"X-Repo-Commit {commit[:80]!r} is not a 40-hex commit id")
        seen["commit"] = commit
    if req.get("file"):
        for header in ("ETag", "X-Linked-Etag"):
            raw = resp.getheader(header)
            if raw is not None:
                value = check_etag(header, raw)
                if header == "X-Linked-Etag" or "etag" not in seen:
                    seen["etag"] = value
        linked = resp.getheader("X-Linked-Etag")
        sha = req.get("sha256")
        if linked is not None and sha and len(seen["etag"]) == 64 and seen["etag"] != sha:
            raise RuleError(
                f"X-Linked-Etag says the file is sha256:{seen['etag']}, but it is pinned to sha256:{sha}"
            )
        size = resp.getheader("X-Linked-Size")
        if size is not None:
            if not size.strip().isdigit():
                raise RuleError(f"X-Linked-Size {size[:40]!r} is not a size")
            if int(size) > int(req["max_bytes"]):
                raise _Failure("announced", "", announced=int(size), limit=int(req["max_bytes"]))
            seen["size"] = size.strip()
    digest = req.get("digest")
    served = resp.getheader("Docker-Content-Digest")
    if digest and served is not None and served.strip() != digest and resp.status not in _REDIRECTS:
        raise RuleError(f"Docker-Content-Digest {served[:80]!r} is not the digest asked for, {digest}")
    link = resp.getheader("Link")
    if link is not None:
        seen["link"] = link[:8192]
    code = resp.getheader("X-Error-Code")
    if code is not None:
        seen["error_code"] = code[:80]
    return seen


def _stream(resp: http.client.HTTPResponse, path: str, limit: int, linked: int | None) -> int:
    """Write the body to a new file at ``path``; stop past ``limit``, the ``Content-Length`` or the size
    the registry announced for the file (``linked``), whichever is smallest."""
    encoding = (resp.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise RuleError(f"Content-Encoding {encoding[:40]!r} was not asked for")
    length = resp.getheader("Content-Length")
    announced: int | None = None
    if length is not None:
        if not length.strip().isdigit():
            raise RuleError(f"Content-Length {length[:40]!r} is not a size")
        announced = int(length)
        if announced > limit:
            raise _Failure("announced", "", announced=announced, limit=limit)
    if linked is not None:
        announced = linked if announced is None else min(announced, linked)
    cap = min(limit, announced) if announced is not None else limit
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    total = 0
    try:
        while True:
            n = resp.readinto(buf)
            if not n:
                break
            total += n
            if total > cap:
                why = "announced" if announced is not None and announced < limit else "max_file_size"
                raise _Failure("cap", "", cap=cap, why=why)
            chunk = view[:n]
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
    finally:
        view.release()
        os.close(fd)
    if announced is not None and total < announced:
        raise _Failure("network", f"the body ended after {total} of {announced} bytes")
    return total


def _exchange(
    job: _Job,
    req: dict[str, Any],
    method: str,
    url: str,
    payload: bytes | None,
    recorded: dict[str, str],
    *,
    follow_all: bool,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send ``method`` to ``url`` and follow redirects (only those back to the registry's own origin
    unless ``follow_all``); returns the open connection and the answer that ended the walk. Every
    answer on the way is held to the rules, and what the registry's answers say is added to
    ``recorded``."""
    for _ in range(MAX_REDIRECTS + 1):
        origin = origin_of(url)
        parts = urlsplit(url)
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", "Connection": "close"}
        # Credentials travel only as job.auth, to the origin: a request header of that kind would follow
        # redirects to other hosts.
        headers.update(
            {k: v for k, v in (req.get("headers") or {}).items() if k.lower() not in _PRIVATE_HEADERS}
        )
        if payload is not None:
            headers["Content-Type"] = str(req.get("content_type", "application/x-www-form-urlencoded"))
        if job.auth is not None and origin == job.origin:
            headers["Authorization"] = job.auth
        conn = _Connection(
            job.broker, parts.scheme, parts.hostname or "", int(origin.rsplit(":", 1)[1]), job.stall_s,
            job.tls_for(parts.scheme),
        )
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(method, target, body=payload, headers=headers)
            resp = conn.getresponse()
            disposition = resp.getheader("Content-Disposition")
            if disposition is not None:
                check_content_disposition(disposition)
            if origin == job.origin:
                recorded.update(_check_registry_answer(job, req, resp))
            if resp.status not in _REDIRECTS:
                return conn, resp
            following = next_url(url, resp.getheader("Location"), allowed=job.hosts)
            if not follow_all and origin_of(following) != job.origin:
                return conn, resp
        except BaseException:
            conn.close()
            raise
        conn.close()
        url = following
        if resp.status == 303:
            method, payload = "GET", None
    raise RuleError(f"more than {MAX_REDIRECTS} redirects")


def _http_failure(resp: http.client.HTTPResponse) -> _Failure:
    extra: dict[str, object] = {}
    challenge = resp.getheader("WWW-Authenticate") if resp.status == 401 else None
    if challenge:
        extra["challenge"] = challenge[:1000]  # how to authenticate: the host decides whether to
    return _Failure("http", f"HTTP {resp.status} {resp.reason[:80]}", resp.status, **extra)


def _fetch(job: _Job, req: dict[str, Any]) -> dict[str, object]:
    """A file is asked about first (HEAD, as Hub clients do: its commit, digest and size come with the
    registry's answer, before any redirect to a CDN), then downloaded (GET) within the size announced."""
    url = str(req["url"])
    body = req.get("body")
    payload = body.encode() if isinstance(body, str) else None
    recorded: dict[str, str] = {}
    announced: int | None = None
    if req.get("file"):
        conn, resp = _exchange(job, req, "HEAD", url, None, recorded, follow_all=False)
        conn.close()
        if resp.status != 200 and resp.status not in _REDIRECTS:
            raise _http_failure(resp)
        length = resp.getheader("Content-Length") if resp.status == 200 else None
        if "size" in recorded:
            announced = int(recorded["size"])
        elif length is not None and length.strip().isdigit():
            announced = int(length)
        if announced is not None and announced > int(req["max_bytes"]):
            raise _Failure("announced", "", announced=announced, limit=int(req["max_bytes"]))
    conn, resp = _exchange(job, req, str(req.get("method", "GET")), url, payload, recorded, follow_all=True)
    try:
        if resp.status != 200:
            raise _http_failure(resp)
        if "size" in recorded:
            linked = int(recorded.pop("size"))
            announced = linked if announced is None else min(announced, linked)
        path = os.path.join(job.out_dir, f"body-{req['id']}")
        size = _stream(resp, path, int(req["max_bytes"]), announced)
    finally:
        conn.close()
    return {"id": req["id"], "ok": True, "status": 200, "size": size, **recorded}


def _run_one(job: _Job, req: dict[str, Any]) -> dict[str, object]:
    try:
        return _fetch(job, req)
    except RedirectRefused as exc:
        failure = _Failure("redirect", str(exc))
    except RuleError as exc:
        failure = _Failure("rule", str(exc))
    except _Failure as exc:
        failure = exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        failure = _Failure("network", f"{type(exc).__name__}: {exc}"[:500])
    with_body = os.path.join(job.out_dir, f"body-{req['id']}")
    try:
        os.unlink(with_body)
    except FileNotFoundError:
        pass
    return {
        "id": req["id"], "ok": False, "kind": failure.kind, "status": failure.status,
        "message": str(failure)[:2000], **failure.extra,
    }


def main(job_path: str, out_dir: str) -> int:
    with os.fdopen(open_input(job_path), "rb") as fh:
        spec = json.loads(fh.read())
    job = _Job(spec, out_dir)
    requests: list[dict[str, Any]] = list(spec["requests"])
    results: list[dict[str, object] | None] = [None] * len(requests)
    pending = list(enumerate(requests))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not pending:
                    return
                i, req = pending.pop(0)
            results[i] = _run_one(job, req)

    count = max(1, min(int(spec.get("parallel", 4)), len(requests)))
    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(os.path.join(out_dir, "result.json"), flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"version": 1, "results": results}, out)
    return 0
