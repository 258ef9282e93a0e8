"""Under ``safeload.patch()``, nothing huggingface_hub does reaches an origin the policy does not name.

A logging HTTP server on 127.0.0.1 plays the unnamed Hub: it is ``HF_ENDPOINT`` (and huggingface_hub's
already-read endpoint constants), ``HF_TOKEN`` holds a secret only this test knows, and the policy names
a ``directory`` registry alone. Each library's own entry points run under ``patch()`` for an unpinned
name and for a name pinned in the directory registry; each either loads from the registry or raises a
``SafeloadError``, and the server must log nothing at all: no model name, no token.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import safeload
from safeload.errors import SafeloadError, UntrustedSourceError
from tests.helpers import models  # noqa: F401  (imports torch._dynamo before the host guard is set)
from tests.helpers.hubserver import tiny_bert_files
from tests.helpers.trust import folder_pins, write_policy

UNPINNED = "acme/private-sd"
BERT, DDPM, LORA, ST = "acme/tiny-bert", "acme/tiny-ddpm", "acme/tiny-lora", "acme/tiny-st"


class LoggingServer:
    """Records every request (method, path, headers) and answers 404, as a Hub would for a private repo."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        log = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                log.append((self.command, self.path, dict(self.headers.items())))
                body = json.dumps({"error": "Repository not found"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory registry with a tiny BERT, a DDPM pipeline, a LoRA for the BERT and a
    sentence-transformers model, each saved by its own library."""
    import diffusers
    import peft
    import sentence_transformers as st
    import transformers
    from sentence_transformers.sentence_transformer import modules as st_models

    root = tmp_path_factory.mktemp("guard") / "registry"
    bert = root / BERT
    bert.mkdir(parents=True)
    for name, data in tiny_bert_files().items():
        (bert / name).write_bytes(data)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    diffusers.DDPMPipeline(
        unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=10)
    ).save_pretrained(root / DDPM)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    peft.get_peft_model(transformers.AutoModel.from_pretrained(bert), lora).save_pretrained(root / LORA)
    config_path = root / LORA / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = BERT
    config_path.write_text(json.dumps(config))
    word = st_models.Transformer(str(bert))
    st.SentenceTransformer(modules=[word, st_models.Pooling(word.get_embedding_dimension())]).save(
        str(root / ST)
    )
    return root


@pytest.fixture
def server(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LoggingServer, str]]:
    """The logging server as the Hub every library would talk to, a secret HF_TOKEN, and a policy that
    names only the directory registry."""
    import huggingface_hub.constants
    import huggingface_hub.hf_api

    srv = LoggingServer()
    token = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_ENDPOINT", srv.endpoint)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", srv.endpoint)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        srv.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", srv.endpoint)
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": str(registry)}},
        models={
            repo: {"registry": "local", "repo": repo, "files": folder_pins(registry / repo)}
            for repo in (BERT, DDPM, LORA, ST)
        },
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))
    try:
        yield srv, token
    finally:
        srv.close()


def _entry_points() -> dict[str, Callable[[str], object]]:
    """Each library's own entry points, called the way third-party code calls them."""
    import diffusers
    import huggingface_hub
    import peft
    import sentence_transformers as st
    import transformers
    from huggingface_hub.utils import get_session

    def peft_adapter(name: str) -> object:
        base = transformers.AutoModel.from_pretrained(BERT)
        return peft.PeftModel.from_pretrained(base, LORA if name == "pinned" else name)

    def fetch_url(name: str) -> object:
        response = get_session().get(huggingface_hub.hf_hub_url(name, "config.json"))
        response.raise_for_status()
        return response

    return {
        "transformers.AutoModel.from_pretrained": transformers.AutoModel.from_pretrained,
        "diffusers.DiffusionPipeline.from_pretrained": diffusers.DiffusionPipeline.from_pretrained,
        "diffusers.UNet2DModel.from_pretrained": lambda n: diffusers.UNet2DModel.from_pretrained(
            n, subfolder="unet"
        ),
        "peft.PeftModel.from_pretrained": peft_adapter,
        "sentence_transformers.SentenceTransformer": st.SentenceTransformer,
        "huggingface_hub.model_info": huggingface_hub.model_info,
        "huggingface_hub.file_exists": lambda n: huggingface_hub.file_exists(n, "config.json"),
        "huggingface_hub.list_repo_files": huggingface_hub.list_repo_files,
        "HfFileSystem().ls": lambda n: huggingface_hub.HfFileSystem(skip_instance_cache=True).ls(n),
        "hf_hub_url + get_session().get": fetch_url,
    }


# Which pinned name each library entry point loads; the hub functions get the BERT's name.
_PINNED = {
    "transformers.AutoModel.from_pretrained": (BERT, "PreTrainedModel"),
    "diffusers.DiffusionPipeline.from_pretrained": (DDPM, "DiffusionPipeline"),
    "diffusers.UNet2DModel.from_pretrained": (DDPM, "UNet2DModel"),
    "peft.PeftModel.from_pretrained": ("pinned", "PeftModel"),
    "sentence_transformers.SentenceTransformer": (ST, "SentenceTransformer"),
}


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "pinned"])
def test_no_request_leaves_for_an_origin_the_policy_does_not_name(
    pinned: bool, server: tuple[LoggingServer, str], tmp_path: Path
) -> None:
    srv, token = server
    outcomes: dict[str, str] = {}
    with safeload.patch():
        for what, call in _entry_points().items():
            name, kind = _PINNED.get(what, (BERT, "")) if pinned else (UNPINNED, "")
            try:
                result = call(name)
            except SafeloadError as exc:
                outcomes[what] = f"refused: {type(exc).__name__}"
                if what.startswith(("huggingface_hub.", "HfFileSystem", "hf_hub_url")):
                    assert isinstance(exc, UntrustedSourceError)
                    assert "127.0.0.1" in str(exc), str(exc)
                continue
            except Exception as exc:  # anything else means the call was not stopped by safeload
                outcomes[what] = f"NOT refused by safeload: {type(exc).__name__}: {str(exc)[:120]}"
                continue
            if kind and any(cls.__name__ == kind for cls in type(result).__mro__):
                outcomes[what] = f"loaded {type(result).__name__}"
            else:
                outcomes[what] = f"NOT refused by safeload: returned {str(result)[:120]}"
    leaked = [
        (method, path, "with the token" if any(token in v for v in headers.values()) else "")
        for method, path, headers in srv.requests
    ]
    assert not leaked, f"the unnamed endpoint received {leaked}; outcomes: {outcomes}"
    bad = {k: v for k, v in outcomes.items() if "NOT refused" in v}
    assert not bad, bad
    if pinned:
        for what in _PINNED:
            assert outcomes[what].startswith("loaded"), (what, outcomes[what])


def test_a_policy_named_hub_endpoint_is_reachable_and_others_are_not(
    tmp_path: Path, server: tuple[LoggingServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule is the policy's: a huggingface registry's endpoint may be asked; its neighbour may not."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    srv, _ = server
    policy = write_policy(
        tmp_path / "named.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": srv.endpoint}},
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))
    other = LoggingServer()
    try:
        with safeload.patch():
            with pytest.raises(RepositoryNotFoundError):
                huggingface_hub.model_info(UNPINNED)
            with pytest.raises(UntrustedSourceError, match=r"127\.0\.0\.1:\d+.*redirect_hosts"):
                huggingface_hub.HfApi(endpoint=other.endpoint).model_info(UNPINNED)
        assert [(m, p) for m, p, _ in srv.requests] == [("GET", f"/api/models/{UNPINNED}")]
        assert other.requests == []
    finally:
        other.close()


def test_unpatch_puts_back_the_session_factory_and_client(server: tuple[LoggingServer, str]) -> None:
    from huggingface_hub.utils import _http, get_session

    before_client = get_session()
    before = (_http._GLOBAL_CLIENT_FACTORY, _http._GLOBAL_ASYNC_CLIENT_FACTORY)
    hooks_before = list(before_client.event_hooks["request"])

    def factories() -> tuple[object, object]:
        return (_http._GLOBAL_CLIENT_FACTORY, _http._GLOBAL_ASYNC_CLIENT_FACTORY)

    with safeload.patch():
        assert factories() != before
        guarded = get_session()
        with safeload.patch():  # nested: the outer patch stays in force on exit
            pass
        assert get_session() is guarded
        with pytest.raises(UntrustedSourceError):
            guarded.get(server[0].endpoint + "/anything")
        with pytest.raises(UntrustedSourceError):  # a client taken before patch() is guarded too
            before_client.get(server[0].endpoint + "/anything")
    assert factories() == before
    assert get_session() is before_client
    assert before_client.event_hooks["request"] == hooks_before
    assert guarded.is_closed
    safeload.patch()
    safeload.unpatch()
    safeload.unpatch()  # twice: nothing left to undo
    assert factories() == before
    assert get_session() is before_client
    assert server[0].requests == []
