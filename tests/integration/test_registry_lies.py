"""A lying Hub-compatible registry cannot write to host paths or steer a fetch with its headers.

Each case is a server on 127.0.0.1 that answers the Hub protocol for the pinned commit but lies in one
header or listing the way a hostile registry or mirror would: an ``ETag`` that is an absolute or ``../``
path to a file in a victim folder (huggingface_hub names its cache blob after it, so with that client
the 43 attacker bytes landed there before anything refused them), an ``X-Repo-Commit`` other than the
pin, an ``X-Linked-Etag`` traversal, a ``Content-Disposition`` with a path, listings with unsafe names,
and a ``Location`` redirect to a second listener that would capture the token. Every case must end in a
typed ``SafeloadError``, leave the victim folder and the rest of the test's folder exactly as they were
(the store's lock files aside), and store nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from safeload._trust.pinning import hash_repo
from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, SafeloadError, UntrustedSourceError
from safeload.policy import load_policy
from tests.helpers.trust import write_policy

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BODY = b"import os; os.system('touch /tmp/pwned')\n#!"  # 43 bytes that must never land outside staging
assert len(BODY) == 43
TOKEN = "hf_secret_token_for_the_registry_only"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Liar:
    """A Hub that answers file requests with ``headers(method, path)`` and lists ``listing``."""

    headers: Callable[[str, str], dict[str, str]] = lambda method, path: {}
    status: Callable[[str, str], int] = lambda method, path: 200
    body: bytes = BODY
    listing: list[dict[str, object]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    endpoint: str = ""

    def gets(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "GET" and "/resolve/" in s.path]


def _handler(liar: Liar) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: bytes | None) -> None:
            liar.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            if "/api/" in self.path:
                data = json.dumps(liar.listing).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            self.send_response(liar.status(self.command, self.path))
            extra = {"X-Repo-Commit": COMMIT, "ETag": '"' + "ab" * 32 + '"'}
            extra.update(liar.headers(self.command, self.path))
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(liar.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if body is not None:
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._answer(None)

        def do_GET(self) -> None:
            self._answer(liar.body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self._answer(b"")

    return Handler


def _serve(liar: Liar) -> Iterator[Liar]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(liar))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    liar.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield liar
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def liar() -> Iterator[Liar]:
    yield from _serve(Liar())


@pytest.fixture
def capture() -> Iterator[Liar]:
    """A second listener: where a redirect would take the client (and, if it leaked, the token)."""
    yield from _serve(Liar())


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.mkdir()
    return path


def _policy(tmp_path: Path, endpoint: str, *, mode: str = "enforce", **registry: object) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        mode=mode,
        registries={
            "liar": {"kind": "huggingface", "endpoint": endpoint, "token_env": "LIAR_TOKEN", **registry}
        },
        models={
            "victim": {
                "registry": "liar",
                "repo": "acme/model",
                "revision": COMMIT,
                "files": {"model.safetensors": "sha256:" + hashlib.sha256(b"the reviewed bytes").hexdigest()},
            }
        },
    )


def _tree(root: Path) -> set[str]:
    """Every path under ``root`` except the store's lock files (made before any fetch)."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if not (p.name.endswith(".lock") or p.is_dir())
    }


def _assert_untouched(tmp_path: Path, victim: Path, before: set[str]) -> None:
    written = list(victim.iterdir())
    assert written == [], f"the registry wrote into the victim folder: {written}"
    after = _tree(tmp_path)
    assert after == before, f"files appeared: {sorted(after - before)}"
    store = tmp_path / "store"
    for part in ("blobs", "models", "manifests", "staging"):
        left = [p for p in (store / part).rglob("*") if not p.is_dir()]
        assert left == [], f"something unverified was left in the store's {part}: {left}"
    assert not Path("/tmp/pwned").exists()


def _refused(
    tmp_path: Path, victim: Path, endpoint: str, error: type[SafeloadError], match: str, **registry: object
) -> None:
    policy = load_policy(_policy(tmp_path, endpoint, **registry))
    before = _tree(tmp_path)
    with pytest.raises(error, match=match):
        fetch_model("victim", policy=policy, progress=False)
    _assert_untouched(tmp_path, victim, before)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIAR_TOKEN", TOKEN)


@pytest.mark.parametrize("on", ["HEAD", "GET", "both"])
@pytest.mark.parametrize("shape", ["absolute", "traversal"])
def test_a_path_in_the_etag_writes_nothing(
    tmp_path: Path, liar: Liar, victim: Path, on: str, shape: str
) -> None:
    target = victim / "pwned"
    etag = str(target) if shape == "absolute" else "../" * 16 + str(target).lstrip("/")
    liar.headers = lambda method, path: {"ETag": f'"{etag}"'} if on in (method, "both") else {}
    _refused(tmp_path, victim, liar.endpoint, IntegrityError, "ETag .* is not a 40- or 64-hex digest")
    assert liar.gets() == [] or on == "GET", "a body was asked for after a HEAD that broke the rules"


def test_a_commit_other_than_the_pin_is_refused(tmp_path: Path, liar: Liar, victim: Path) -> None:
    liar.headers = lambda method, path: {"X-Repo-Commit": "f" * 40}
    refused = f"X-Repo-Commit 'f{{40}}' is not the pinned commit {COMMIT}"
    _refused(tmp_path, victim, liar.endpoint, IntegrityError, refused)
    assert liar.gets() == []


@pytest.mark.parametrize("value", ["../../../../etc/cron.d/x", "/etc/cron.d/x", "ab" * 32 + "\x00"])
def test_an_x_linked_etag_traversal_is_refused(tmp_path: Path, liar: Liar, victim: Path, value: str) -> None:
    liar.headers = lambda method, path: {"X-Linked-Etag": f'"{value}"'}
    refused = "X-Linked-Etag .* is not a 40- or 64-hex digest"
    _refused(tmp_path, victim, liar.endpoint, IntegrityError, refused)
    assert liar.gets() == []


def test_an_lfs_digest_that_contradicts_the_pin_stops_before_the_body(
    tmp_path: Path, liar: Liar, victim: Path
) -> None:
    liar.headers = lambda method, path: {"X-Linked-Etag": '"' + hashlib.sha256(BODY).hexdigest() + '"'}
    refused = "X-Linked-Etag says the file is sha256:.*pinned to"
    _refused(tmp_path, victim, liar.endpoint, IntegrityError, refused)
    assert liar.gets() == []


@pytest.mark.parametrize(
    "disposition",
    [
        'attachment; filename="../../../../etc/cron.d/x"',
        "attachment; filename=/etc/cron.d/x",
        "attachment; filename*=UTF-8''..%2F..%2Fetc%2Fcron.d%2Fx",
        'attachment; filename=".."',
    ],
    ids=["quoted-traversal", "absolute", "rfc5987-encoded", "dot-dot"],
)
def test_a_content_disposition_with_a_path_is_refused(
    tmp_path: Path, liar: Liar, victim: Path, disposition: str
) -> None:
    liar.headers = lambda method, path: {"Content-Disposition": disposition}
    refused = "Content-Disposition names .* not a plain file name"
    _refused(tmp_path, victim, liar.endpoint, IntegrityError, refused)


@pytest.mark.parametrize("on", ["HEAD", "GET"])
def test_a_redirect_to_another_port_is_not_followed_by_default(
    tmp_path: Path, liar: Liar, capture: Liar, victim: Path, on: str
) -> None:
    def redirect(method: str, path: str) -> dict[str, str]:
        return {"Location": f"{capture.endpoint}/steal{path}"} if method == on else {}

    liar.status = lambda method, path: 302 if method == on else 200
    liar.headers = redirect
    refused = "redirected to 127.0.0.1:.*redirect_hosts"
    _refused(tmp_path, victim, liar.endpoint, UntrustedSourceError, refused)
    assert capture.seen == [], "the client connected to a host the policy does not name"
    used = any(s.headers.get("authorization") == f"Bearer {TOKEN}" for s in liar.seen)
    assert used, "the token was never sent, so its absence elsewhere would prove nothing"


def test_an_allowed_redirect_carries_no_token_and_its_bytes_are_still_checked(
    tmp_path: Path, liar: Liar, capture: Liar, victim: Path
) -> None:
    liar.status = lambda method, path: 302 if method == "GET" else 200
    cdn = {"Location": f"{capture.endpoint}/cdn/blob"}
    liar.headers = lambda method, path: cdn if method == "GET" else {}
    allowed = [f"127.0.0.1:{capture.endpoint.rsplit(':', 1)[1]}"]
    _refused(tmp_path, victim, liar.endpoint, IntegrityError, "expected sha256:", redirect_hosts=allowed)
    assert [s.path for s in capture.seen] == ["/cdn/blob"]
    assert "authorization" not in capture.seen[0].headers, "the token went to the redirect target"
    assert liar.seen[0].headers.get("authorization") == f"Bearer {TOKEN}"


def test_a_good_file_behind_an_allowed_redirect_loads(tmp_path: Path, liar: Liar, capture: Liar) -> None:
    capture.body = b"the reviewed bytes"
    liar.status = lambda method, path: 302
    liar.headers = lambda method, path: {"Location": f"{capture.endpoint}/cdn/blob"}
    port = capture.endpoint.rsplit(":", 1)[1]
    policy = load_policy(_policy(tmp_path, liar.endpoint, redirect_hosts=[f"127.0.0.1:{port}"]))
    fetched = fetch_model("victim", policy=policy, progress=False)
    assert (fetched.folder / "model.safetensors").read_bytes() == b"the reviewed bytes"
    assert all("authorization" not in s.headers for s in capture.seen)


def test_a_redirect_to_plain_http_from_https_is_refused() -> None:
    from safeload._sandbox.worker._http_rules import RuleError, next_url

    with pytest.raises(RuleError, match="leaves https for plain http"):
        next_url("https://hub.example/x", "http://hub.example/y", allowed=["hub.example"])


@pytest.mark.parametrize(
    "name", ["../../../../etc/cron.d/x", "/etc/cron.d/x", "ok/../../x", "model\x00.safetensors"],
    ids=["traversal", "absolute", "inner-traversal", "nul"],
)
@pytest.mark.parametrize("via", ["audit-load", "pin"])
def test_a_listing_with_an_unsafe_name_fails_whole(
    tmp_path: Path, liar: Liar, victim: Path, name: str, via: str
) -> None:
    liar.listing = [
        {"type": "file", "path": "config.json", "oid": "0" * 40, "size": 2},
        {"type": "file", "path": name, "oid": "1" * 40, "size": 43},
    ]
    policy_path = _policy(tmp_path, liar.endpoint, mode="audit")
    policy = load_policy(policy_path)
    before = _tree(tmp_path)
    with pytest.raises(IntegrityError, match="not a repository-relative path"):
        if via == "pin":
            hash_repo(policy, policy.registries["liar"], "acme/model", COMMIT, progress=False)
        else:
            fetch_model(f"acme/model@{COMMIT}", policy=policy, progress=False)
    _assert_untouched(tmp_path, victim, before)
    assert liar.gets() == [], "files were downloaded from a listing that failed"


def test_credential_headers_in_a_request_never_follow_a_redirect(
    tmp_path: Path, liar: Liar, capture: Liar
) -> None:
    """Only the site's ``auth`` carries credentials, and only to the origin: a request's own
    Authorization or Cookie header is dropped before anything is sent, to the origin or elsewhere."""
    from safeload._jail.fetch import Request, Site, fetch

    liar.status = lambda method, path: 302
    liar.headers = lambda method, path: {"Location": f"{capture.endpoint}/cdn/blob"}
    port = capture.endpoint.rsplit(":", 1)[1]
    site = Site(endpoint=liar.endpoint, redirect_hosts=(f"127.0.0.1:{port}",), auth=f"Bearer {TOKEN}",
                commit=None, cadata=None)
    leaky = {"Authorization": "Bearer leaked", "cookie": "session=leaked", "Accept": "application/json"}
    req = Request(id="0", url=f"{liar.endpoint}/x", max_bytes=1 << 20, headers=leaky)
    answers = fetch([req], tmp_path, site)
    assert answers["0"].ok and capture.seen, "the redirect was not followed, so nothing was tested"
    for seen in capture.seen + liar.seen:
        assert "leaked" not in json.dumps(seen.headers), seen
        assert seen.headers.get("accept") == "application/json"
    assert all("authorization" not in s.headers for s in capture.seen)
    assert liar.seen[0].headers.get("authorization") == f"Bearer {TOKEN}"
