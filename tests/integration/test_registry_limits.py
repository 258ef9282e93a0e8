"""A lying Hub cannot fill the disk: downloads stop at the announced size and at ``max_file_size``.

The server here speaks just enough of the Hub protocol for a file download (a HEAD with the commit, a
digest etag and the announced size; a GET that streams the body) and lies about the body: it
announces one size (or none) and then streams far more, without a Content-Length, until the client hangs
up. Without the cap the whole stream would land in the store's staging folder before the sha256 pin
refused it; the server's own count of bytes taken off its socket is the trace that shows whether it did.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError
from safeload.policy import load_policy
from tests.helpers.trust import write_policy

_MiB = 1 << 20
COMMIT = "0123456789abcdef0123456789abcdef01234567"
STREAM = 768 * _MiB  # what the liar would send if nobody stopped it
SLACK = 64 * _MiB  # socket buffers and one in-flight chunk, far below STREAM


@dataclass
class Liar:
    """What the server announces for every file, and how much the client took."""

    announce: int | None
    sent: int = 0
    gets: int = 0
    done: threading.Event = field(default_factory=threading.Event)


def _handler(liar: Liar) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _head(self, length: int | None) -> None:
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", '"' + "cd" * 32 + '"')
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.send_header("Connection", "close")

        def do_HEAD(self) -> None:
            self._head(liar.announce if liar.announce is not None else None)
            self.end_headers()

        def do_GET(self) -> None:
            liar.gets += 1
            self._head(None)  # no length on the body: it ends when the connection does
            self.end_headers()
            chunk = b"\xa5" * _MiB
            try:
                while liar.sent < STREAM:
                    self.wfile.write(chunk)
                    liar.sent += len(chunk)
                self.wfile.flush()
            except OSError:
                pass
            finally:
                self.close_connection = True
                liar.done.set()

    return Handler


@pytest.fixture
def liar_server() -> Iterator[tuple[str, Liar]]:
    liar = Liar(announce=None)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(liar))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", liar
    finally:
        server.shutdown()
        server.server_close()


def _policy(tmp_path: Path, endpoint: str, **registry: str) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"liar": {"kind": "huggingface", "endpoint": endpoint, **registry}},
        models={
            "victim": {
                "registry": "liar",
                "repo": "acme/model",
                "revision": COMMIT,
                "files": {"model.safetensors": "sha256:" + "ab" * 32},
            }
        },
    )


def _nothing_stored(tmp_path: Path) -> None:
    store = tmp_path / "store"
    left = [p for p in store.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == [], f"the refused download left files behind: {left}"


@pytest.mark.parametrize(
    ("announce", "max_file_size", "cap", "why"),
    [
        (2 * _MiB, None, 2 * _MiB, "its announced size"),  # announced small, streams on
        (None, "4MiB", 4 * _MiB, "max_file_size"),  # announces nothing, streams on
    ],
    ids=["past-announced-size", "past-max-file-size"],
)
def test_a_download_stops_at_its_cap(
    tmp_path: Path,
    liar_server: tuple[str, Liar],
    announce: int | None,
    max_file_size: str | None,
    cap: int,
    why: str,
) -> None:
    endpoint, liar = liar_server
    liar.announce = announce
    extra = {"max_file_size": max_file_size} if max_file_size else {}
    policy = load_policy(_policy(tmp_path, endpoint, **extra))
    with pytest.raises(IntegrityError, match=f"more than {cap} bytes .*{why}.*download was stopped"):
        fetch_model("victim", policy=policy, progress=False)
    assert liar.done.wait(30), "the server never saw the client hang up"
    assert liar.gets == 1
    assert liar.sent < cap + SLACK, f"the client kept reading: {liar.sent} bytes left the server"
    _nothing_stored(tmp_path)


def test_an_announced_size_over_the_cap_is_refused_before_the_body(
    tmp_path: Path, liar_server: tuple[str, Liar]
) -> None:
    endpoint, liar = liar_server
    liar.announce = 1 << 30
    policy = load_policy(_policy(tmp_path, endpoint, max_file_size="8MiB"))
    refused = r"announces 1073741824 bytes, over .*max_file_size.*nothing was downloaded"
    with pytest.raises(IntegrityError, match=refused):
        fetch_model("victim", policy=policy, progress=False)
    assert liar.sent < SLACK
    _nothing_stored(tmp_path)


def test_the_default_cap_is_64_gib(tmp_path: Path, liar_server: tuple[str, Liar]) -> None:
    endpoint, _ = liar_server
    spec = load_policy(_policy(tmp_path, endpoint)).registries["liar"]
    assert getattr(spec, "max_file_bytes") == 64 << 30
