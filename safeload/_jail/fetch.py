"""Downloads in the jail: the registry clients' only way to the network.

:func:`fetch` runs the fetch worker (:mod:`safeload._sandbox.worker._fetch`) in the loader's jail (its own
unprivileged uid, read-only root, no network namespace of its own, seccomp, rlimits, a wall-clock
limit) with one addition: a connection broker (:mod:`safeload._jail.broker`) that opens TCP connections for
it to the registry's endpoint and its allowed redirect hosts, and to nothing else. The worker writes
each body to a file named by the request's id inside its output folder; the launcher takes that folder
back exactly as it takes a loader worker's output (ownership reclaimed, one link per file, size caps),
and this module opens every file it hands on with ``O_NOFOLLOW`` and checks it against what the worker
reported. So no server-controlled value becomes a host path, and a bug in the HTTP stack can write
nowhere but the run's own staging folder.

The answers are data for the registry module to judge; nothing here is trusted until the store has
hashed it against a pin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from safeload._sandbox.worker._http_rules import origin_of
from safeload.errors import SandboxError

from .broker import Broker
from .handback import open_output, printable, sealed_job, worker_error
from .launcher import Tier, run_worker
from .limits import Limits

__all__ = ["Answer", "Request", "Site", "fetch"]

_RESULT_CAP = 16 << 20
# Downloads of large models take long; what bounds a stalled one is the per-read timeout (``stall_s``).
FETCH_TIMEOUT_S = 6 * 3600.0
_FETCH_MEMORY = 2 << 30
_PARALLEL = 4
_KINDS = frozenset({"http", "rule", "cap", "announced", "redirect", "network"})


@dataclass(frozen=True)
class Request:
    """One GET (or a form POST) to run in the jail; ``file`` marks a Hub repository file download
    (asked about with a HEAD first), whose etags must be digests and whose LFS etag must agree with
    ``sha256`` (the pin's hex) when given."""

    id: str
    url: str
    max_bytes: int
    method: str = "GET"
    body: str | None = None
    file: bool = False
    sha256: str | None = None
    digest: str | None = None  # an OCI digest: a Docker-Content-Digest that differs stops the download
    headers: Mapping[str, str] | None = None  # sent to every host along the way (Accept, ...)


@dataclass(frozen=True)
class Site:
    """Where a run may go: the registry's endpoint (the only origin that gets ``auth``), further
    redirect hosts, the commit every registry answer must name (when it names one), and the CA
    certificates (PEM) TLS is checked against (None: the system's)."""

    endpoint: str
    redirect_hosts: tuple[str, ...] = ()
    auth: str | None = None
    commit: str | None = None
    cadata: str | None = None
    weakest_jail: Tier = "landlock"


@dataclass(frozen=True)
class Answer:
    """What the worker reported for one request; ``path`` is the body when ``ok``."""

    id: str
    ok: bool
    status: int | None = None
    size: int = 0
    commit: str | None = None
    etag: str | None = None
    link: str | None = None
    error_code: str | None = None
    kind: str | None = None
    message: str = ""
    details: Mapping[str, int | str] | None = None
    path: Path | None = None
    challenge: str | None = None  # a 401's WWW-Authenticate, unchecked


def _allowed_hosts(site: Site) -> tuple[str, ...]:
    origin = origin_of(site.endpoint)
    return (origin.split("://", 1)[1], *site.redirect_hosts)


def fetch(
    requests: Sequence[Request],
    output_dir: Path,
    site: Site,
    *,
    on_output: Callable[[int], None] | None = None,
    stall_s: float = 60.0,
) -> dict[str, Answer]:
    """Run ``requests`` in the jail; bodies land in ``output_dir`` (made by the caller, private, empty).
    Returns each request's answer by id.

    Raises:
        SandboxUnavailableError, SandboxTimeoutError, SandboxLimitError: as for any jailed run.
        SandboxError: the worker crashed or reported something that does not validate.
    """
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids) or not all(i.isalnum() and i.isascii() for i in ids):
        raise SandboxError("fetch request ids must be unique and alphanumeric")
    total_cap = sum(r.max_bytes for r in requests)
    limits = Limits(
        timeout_s=FETCH_TIMEOUT_S,
        memory_bytes=_FETCH_MEMORY,
        max_output_bytes=max(total_cap, 1) + _RESULT_CAP,
        max_output_files=len(requests) + 2,
        weakest_jail=site.weakest_jail,
    )
    allowed = _allowed_hosts(site)
    with Broker(allowed) as broker:
        job = {
            "version": 1,
            "broker_fd": broker.child_fd,
            "origin": site.endpoint,
            "hosts": list(allowed),
            "auth": site.auth,
            "commit": site.commit,
            "cadata": site.cadata,
            "stall_s": stall_s,
            "parallel": _PARALLEL,
            "requests": [
                {
                    "id": r.id, "url": r.url, "method": r.method, "body": r.body, "max_bytes": r.max_bytes,
                    "file": r.file, "sha256": r.sha256, "digest": r.digest,
                    "headers": dict(r.headers or {}),
                }
                for r in requests
            ],
        }
        job_fd = sealed_job(job, "fetch")
        try:
            run = run_worker(
                job_fd, output_dir, mode="fetch", limits=limits, inherit=(broker.child_fd,),
                on_output=on_output,
            )
        finally:
            os.close(job_fd)
    if run.returncode != 0:
        why = worker_error(output_dir, run.stderr, "fetch")
        raise SandboxError(f"the fetch worker failed (exit {run.returncode}): {why}")
    return _read_answers(output_dir, {r.id: r for r in requests})


def _read_answers(output_dir: Path, requests: Mapping[str, Request]) -> dict[str, Answer]:
    fd = open_output(output_dir / "result.json", _RESULT_CAP, "fetch")
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(_RESULT_CAP + 1)
    try:
        doc = json.loads(raw)
        items = doc["results"]
        if doc.get("version") != 1 or not isinstance(items, list) or len(items) != len(requests):
            raise ValueError("wrong shape")
        answers = [_answer(item, requests, output_dir) for item in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise SandboxError(f"the fetch worker's result does not validate: {printable(str(exc))}") from None
    out = {a.id: a for a in answers}
    if set(out) != set(requests):
        raise SandboxError("the fetch worker's result does not answer every request exactly once")
    return out


def _opt_str(item: Mapping[str, object], key: str, limit: int = 8192) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{key} is not a short string")
    return value


def _answer(item: object, requests: Mapping[str, Request], output_dir: Path) -> Answer:
    if not isinstance(item, dict):
        raise ValueError("an answer is not an object")
    rid = item.get("id")
    if not isinstance(rid, str) or rid not in requests:
        raise ValueError(f"answer for unknown request {rid!r}")
    status = item.get("status")
    if status is not None and (not isinstance(status, int) or isinstance(status, bool)):
        raise ValueError("status is not an integer")
    common = {
        "id": rid, "status": status, "commit": _opt_str(item, "commit", 80),
        "etag": _opt_str(item, "etag", 80), "link": _opt_str(item, "link"),
        "error_code": _opt_str(item, "error_code", 80),
    }
    if item.get("ok") is True:
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("size is not a count")
        path = output_dir / f"body-{rid}"
        fd = open_output(path, requests[rid].max_bytes, "fetch")
        try:
            if os.fstat(fd).st_size != size:
                raise ValueError(f"body-{rid} does not hold the {size} bytes reported")
        finally:
            os.close(fd)
        return Answer(ok=True, size=size, path=path, **common)  # type: ignore[arg-type]
    kind = item.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown failure kind {kind!r}")
    details = {k: v for k, v in item.items() if k in ("announced", "limit", "cap", "why")}
    if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in details.values()):
        raise ValueError("failure details are not numbers or names")
    message = printable(_opt_str(item, "message", 4000) or "")
    challenge = _opt_str(item, "challenge", 1000)
    return Answer(
        ok=False, kind=str(kind), message=message, details=details, challenge=challenge, **common  # type: ignore[arg-type]
    )
