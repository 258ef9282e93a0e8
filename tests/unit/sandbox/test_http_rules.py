"""The header rules the fetch worker holds every registry answer to (sandbox/worker/_http_rules.py)."""

from __future__ import annotations

import socket

import pytest

from safeload._jail.broker import Broker
from safeload._sandbox.worker._http_rules import (
    RedirectRefused,
    RuleError,
    check_content_disposition,
    check_etag,
    host_allowed,
    next_url,
    origin_of,
)

SHA1 = "9e26dfeeb6e641a33dae4961196235bdb965b21b"
SHA256 = "ab" * 32


@pytest.mark.parametrize("raw", [SHA1, f'"{SHA1}"', f'W/"{SHA256}"', f"  {SHA256} "])
def test_digest_etags_pass(raw: str) -> None:
    assert check_etag("ETag", raw) in (SHA1, SHA256)


@pytest.mark.parametrize(
    "raw",
    ['"/etc/cron.d/x"', '"../../../../root/.bashrc"', f'"{SHA256}/../x"', f'"{SHA256}\x00"', '"liar-etag"',
     SHA1.upper(), '""', f'"{SHA1[:-1]}"'],
)
def test_anything_but_a_digest_is_refused(raw: str) -> None:
    with pytest.raises(RuleError, match="is not a 40- or 64-hex digest"):
        check_etag("ETag", raw)


@pytest.mark.parametrize(
    "raw",
    ['attachment; filename="model.safetensors"', "inline; filename*=UTF-8''model.safetensors; filename=x",
     "inline", 'attachment; filename="a;b.bin"'],
)
def test_plain_file_names_pass(raw: str) -> None:
    check_content_disposition(raw)


@pytest.mark.parametrize(
    "raw",
    ['attachment; filename="../x"', "attachment; filename=/etc/x", "attachment; filename*=UTF-8''..%2Fx",
     'attachment; filename="a\\\\b"', "attachment; filename=..", "attachment; filename*=UTF-8''%00x",
     'attachment; filename=""', "inline; filename=ok; filename*=UTF-8''%2Fetc%2Fx"],
)
def test_paths_in_content_disposition_are_refused(raw: str) -> None:
    with pytest.raises(RuleError, match="not a plain file name"):
        check_content_disposition(raw)


def test_origins_spell_out_default_ports() -> None:
    assert origin_of("https://HuggingFace.co/x") == "https://huggingface.co:443"
    assert origin_of("http://127.0.0.1:8080/a?b") == "http://127.0.0.1:8080"
    assert origin_of("http://[::1]:9/") == "http://[::1]:9"
    for bad in ("ftp://h/x", "//h/x", "http://user:pw@h/x", "http://h:99999/", "file:///etc/passwd"):
        with pytest.raises(RuleError):
            origin_of(bad)


@pytest.mark.parametrize(
    ("host", "port", "rules", "ok"),
    [
        ("cdn-lfs.hf.co", 443, ["*.hf.co"], True),
        ("hf.co", 443, ["*.hf.co"], False),  # the wildcard means a subdomain
        ("evilhf.co", 443, ["*.hf.co"], False),
        ("cdn.hf.co", 8443, ["*.hf.co"], False),  # other ports must be named
        ("127.0.0.1", 8080, ["127.0.0.1:8080"], True),
        ("127.0.0.1", 8081, ["127.0.0.1:8080"], False),
        ("::1", 9000, ["[::1]:9000"], True),
        ("example.com", 80, [], False),
    ],
)
def test_host_rules(host: str, port: int, rules: list[str], ok: bool) -> None:
    assert host_allowed(host, port, rules) is ok


def test_redirects() -> None:
    allowed = ["hub.example:443", "*.cdn.example"]
    assert next_url("https://hub.example/a/b", "/c", allowed=allowed) == "https://hub.example/c"
    cdn = next_url("https://hub.example/a", "https://x.cdn.example/o?sig=1", allowed=allowed)
    assert cdn == "https://x.cdn.example/o?sig=1"
    with pytest.raises(RedirectRefused, match=r"redirected to other\.example:443"):
        next_url("https://hub.example/a", "https://other.example/", allowed=allowed)
    with pytest.raises(RuleError, match="leaves https"):
        next_url("https://hub.example/a", "http://hub.example/b", allowed=allowed)
    with pytest.raises(RuleError, match="without a Location"):
        next_url("https://hub.example/a", None, allowed=allowed)
    with pytest.raises(RuleError, match="whitespace or control"):
        next_url("https://hub.example/a", "/b\r\nX-Injected: 1", allowed=allowed)
    with pytest.raises(RuleError, match="credentials"):
        next_url("https://hub.example/a", "https://u:p@hub.example/b", allowed=allowed)


def _ask(sock: socket.socket, msg: bytes) -> tuple[bytes, list[int]]:
    sock.send(msg)
    data, fds, _, _ = socket.recv_fds(sock, 4096, 1)
    return data, fds


def test_the_broker_connects_only_to_allowed_hosts() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with Broker([f"127.0.0.1:{port}"]) as broker:
        jail = socket.socket(fileno=socket.dup(broker.child_fd))
        data, fds = _ask(jail, b'{"host": "127.0.0.1", "port": %d}' % port)
        assert b'"ok": true' in data and len(fds) == 1
        conn = socket.socket(fileno=fds[0])
        served, _ = listener.accept()
        conn.sendall(b"ping")
        assert served.recv(4) == b"ping"
        other_port = b'{"host": "127.0.0.1", "port": %d}' % (port + 1)
        other_name = b'{"host": "localhost", "port": %d}' % port
        for msg in (other_port, other_name):
            data, fds = _ask(jail, msg)
            assert fds == [] and b"not the registry" in data
        for bad in (b"nonsense", b'{"host": "a b", "port": 1}', b'{"host": "h", "port": true}'):
            data, fds = _ask(jail, bad)
            assert fds == [] and b"malformed" in data
        assert broker.refused == [("127.0.0.1", port + 1), ("localhost", port)]
        for s in (conn, served, jail):
            s.close()
    listener.close()
