"""Integration fixtures: a real Hub (olah) on 127.0.0.1 with real repositories.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_DISABLE_XET`` once, at import,
so they are set here, when pytest imports this file and before any test module imports the client. The
port is chosen now and the server started on it later (session fixture ``hub``), so even code that relies
on the default endpoint talks to the test server and never to the public Hub.

Fixtures:
- ``hub`` (session): a :class:`tests.helpers.hubserver.HubServer` with ``sentence-transformers/
  all-MiniLM-L6-v2`` (commit ``hub.minilm_sha``) and ``safeload-test/tiny-bert`` (commit ``hub.tiny_sha``,
  safetensors + ``pytorch_model.bin`` + tokenizer) already committed.
- ``hf_cache`` (function): a fresh ``HF_HUB_CACHE`` folder for the test (also set in the environment).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hubserver import HubServer, free_port, minilm_files, tiny_bert_files

_PORT = int(os.environ.get("SAFELOAD_TEST_HUB_PORT") or free_port())
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="safeload-hf-cache-"))
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_PORT}"
os.environ["HF_HUB_CACHE"] = str(_SESSION_CACHE)
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY = "safeload-test/tiny-bert"


class SessionHub(HubServer):
    """The shared server plus the commits of the repositories it starts with."""

    minilm_sha: str
    tiny_sha: str


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHub]:
    root = tmp_path_factory.mktemp("olah")
    server = HubServer.start(root, port=_PORT)
    server.__class__ = SessionHub
    session = server
    assert isinstance(session, SessionHub)
    try:
        session.minilm_sha = session.add_repo(MINILM, minilm_files())
        session.tiny_sha = session.add_repo(TINY, tiny_bert_files(bin=True))
        yield session
    finally:
        session.stop()


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache
