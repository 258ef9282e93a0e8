"""A registry that cannot be reached is told apart from one that lies: nothing listening on the endpoint,
or a server answering 503, raises ``RegistryUnavailableError`` (never ``IntegrityError``), stores
nothing, and says how to fix it. The fetch runs in the real fetch jail against 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, RegistryUnavailableError, SafeloadError
from safeload.policy import load_policy
from tests.integration.test_registry_lies import Liar, _policy, _serve, _tree


@pytest.fixture
def liar() -> Iterator[Liar]:
    yield from _serve(Liar())


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIAR_TOKEN", "hf_token")


def _closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: bound, then released (the kernel hands out others first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _stored(tmp_path: Path) -> list[Path]:
    store = tmp_path / "store"
    return [p for part in ("blobs", "models") for p in (store / part).rglob("*") if not p.is_dir()]


def test_nothing_listening_is_registry_unavailable(tmp_path: Path) -> None:
    port = _closed_port()
    policy = load_policy(_policy(tmp_path, f"http://127.0.0.1:{port}"))
    with pytest.raises(RegistryUnavailableError) as caught:
        fetch_model("victim", policy=policy, progress=False)
    text = str(caught.value)
    assert f"registry 'liar' (http://127.0.0.1:{port}): could not fetch" in text
    assert f"no connection to 127.0.0.1:{port}" in text and "ConnectionRefusedError" in text
    assert "check that [registries.liar] endpoint is right and reachable from this host" in text
    assert not isinstance(caught.value, IntegrityError) and _stored(tmp_path) == []


def test_a_server_error_is_registry_unavailable(tmp_path: Path, liar: Liar) -> None:
    liar.status = lambda method, path: 503
    policy = load_policy(_policy(tmp_path, liar.endpoint))
    with pytest.raises(RegistryUnavailableError, match=r"HTTP 503 .*; the server failed; try again later"):
        fetch_model("victim", policy=policy, progress=False)
    assert liar.gets() == [] and _stored(tmp_path) == []


def test_a_client_error_stays_a_plain_safeload_error(tmp_path: Path, liar: Liar) -> None:
    liar.status = lambda method, path: 400
    policy = load_policy(_policy(tmp_path, liar.endpoint))
    before = _tree(tmp_path)
    with pytest.raises(SafeloadError, match="HTTP 400") as caught:
        fetch_model("victim", policy=policy, progress=False)
    assert type(caught.value) is SafeloadError
    assert _tree(tmp_path) == before
