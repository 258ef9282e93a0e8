"""MLflow registries: a real ``mlflow server``, models logged with mlflow's own client, and lying servers.

The real server (PyPI's mlflow, started on 127.0.0.1 by :mod:`tests.helpers.mlflowserver`) holds a tiny
BERT logged with ``mlflow.transformers.log_model`` and a tiny module logged with ``mlflow.pytorch.log_model``
(``serialization_format="pickle"``). Each is pinned (name, version, source, flavor, every file's sha256
and size), fetched through the fetch jail, loaded through ``safeload.mlflow`` and compared with what plain
mlflow's ``load_model`` gives in a throwaway process (which this test process never is: it must not
unpickle). Lying servers (the standard library's, on 127.0.0.1) name other hosts, ``file://`` and
traversals as the download URI, send more bytes than listed, serve overwritten files and another source;
a second listener records every request, to prove no credentials leaked to it. Models that carry code
(``code:``, ``python_model``, ``auto_map``) are refused before any loader runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, PolicyError, UnsafeContentError, UntrustedSourceError
from safeload.policy import load_policy
from tests.helpers.mlflowserver import MlflowServer
from tests.helpers.tinynet import TinyNet
from tests.helpers.trust import write_policy

if os.environ.get("CI"):
    import mlflow.server  # noqa: F401  (in CI a missing extra fails the run instead of skipping it)
else:
    pytest.importorskip("mlflow.server", reason="needs the mlflow extra (pip install 'safeload[mlflow]')")

SENTENCE = "the cat [MASK] on the mat"
NET_INPUT = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -3.0, 0.0]]
TOKEN = "mlflow-token-for-the-registry-only"

_LOG = textwrap.dedent(
    """
    import json, sys, tempfile, pathlib
    sys.path.insert(0, sys.argv[1])
    import mlflow, transformers
    from tests.helpers.models import tiny_bert, write_tokenizer
    from tests.helpers.tinynet import TinyNet
    import torch
    tmp = pathlib.Path(tempfile.mkdtemp())
    tok = transformers.AutoTokenizer.from_pretrained(write_tokenizer(tmp / "tok"))
    with mlflow.start_run():
        bert = mlflow.transformers.log_model(
            {"model": tiny_bert(), "tokenizer": tok}, name="bert", task="fill-mask",
            pip_requirements=["transformers", "torch"], registered_model_name="tiny-bert",
        )
    torch.manual_seed(3)
    with mlflow.start_run():
        net = mlflow.pytorch.log_model(
            TinyNet(), name="net", serialization_format="pickle", pip_requirements=["torch"],
            registered_model_name="tiny-net",
        )
    print(json.dumps({"bert": str(bert.registered_model_version), "net": str(net.registered_model_version)}))
    """
)

_REFERENCE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import mlflow, torch
    bert, net, sentence, x = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    pipe = mlflow.transformers.load_model(f"models:/tiny-bert/{bert}")
    fill = pipe(sentence)
    module = mlflow.pytorch.load_model(f"models:/tiny-net/{net}")
    with torch.no_grad():
        out = module(torch.tensor(x)).tolist()
    print(json.dumps({"fill": fill, "net": out}))
    """
)


@dataclass
class Logged:
    server: MlflowServer
    bert: str
    net: str
    reference: dict[str, Any]


def _run(script: str, env: dict[str, str], *args: str) -> Any:
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", script, root, *args], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"mlflow client failed: {done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer.start(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def logged(mlflow_server: MlflowServer) -> Logged:
    env = mlflow_server.client_env()
    versions = _run(_LOG, env)
    ref = _run(_REFERENCE, env, versions["bert"], versions["net"], SENTENCE, json.dumps(NET_INPUT))
    return Logged(server=mlflow_server, bert=versions["bert"], net=versions["net"], reference=ref)


def pin(server: MlflowServer, name: str, version: str, flavor: str) -> dict[str, Any]:
    """The [models] entry for ``name`` version ``version``, from what the real server serves now."""
    info = server.version(name, version)
    root = server.download_uri(name, version).removeprefix("mlflow-artifacts:/")
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}

    def walk(rel: str) -> None:
        path = f"{root}/{rel}" if rel else root
        url = f"{server.endpoint}/api/2.0/mlflow-artifacts/artifacts?path={urllib.parse.quote(path)}"
        with urllib.request.urlopen(url) as resp:
            listing = json.loads(resp.read())
        for item in listing.get("files", []):
            child = f"{rel}/{item['path']}" if rel else item["path"]
            if item.get("is_dir"):
                walk(child)
                continue
            with urllib.request.urlopen(
                f"{server.endpoint}/api/2.0/mlflow-artifacts/artifacts/{root}/{child}"
            ) as r:
                data = r.read()
            files[child] = "sha256:" + hashlib.sha256(data).hexdigest()
            sizes[child] = len(data)

    walk("")
    return {
        "registry": "ml", "repo": name, "revision": version, "source": info["source"], "flavor": flavor,
        "files": files, "sizes": sizes,
    }  # fmt: skip


def policy_for(tmp_path: Path, endpoint: str, models: dict[str, dict[str, Any]], **registry: Any) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"ml": {"kind": "mlflow", "endpoint": endpoint, **registry}},
        models=models,
        audit_log=tmp_path / "audit.jsonl",
    )


# ---------------------------------------------------------------------------------------- the real server


@pytest.mark.slow
def test_transformers_model_logged_by_mlflow_loads_like_mlflow(tmp_path: Path, logged: Logged) -> None:
    import safeload.mlflow.transformers

    entry = pin(logged.server, "tiny-bert", logged.bert, "transformers")
    assert {"MLmodel", "model/model.safetensors", "components/tokenizer/tokenizer.json"} <= set(
        entry["files"]
    )
    policy = load_policy(policy_for(tmp_path, logged.server.endpoint, {"tiny-bert": entry}))
    pipe = safeload.mlflow.transformers.load_model(f"models:/tiny-bert/{logged.bert}", policy=policy)
    fill = pipe(SENTENCE)
    want = logged.reference["fill"]
    assert [f["token_str"] for f in fill] == [w["token_str"] for w in want]
    assert [f["token"] for f in fill] == [w["token"] for w in want]
    assert torch.allclose(torch.tensor([f["score"] for f in fill]), torch.tensor([w["score"] for w in want]))
    parts = safeload.mlflow.transformers.load_model("tiny-bert", return_type="components", policy=policy)
    assert set(parts) == {"task", "model", "tokenizer"} and parts["task"] == "fill-mask"
    # The folder holds exactly the pinned files, read-only, in the store.
    fetched = fetch_model("tiny-bert", policy=policy, progress=False)
    on_disk = {p.relative_to(fetched.folder).as_posix() for p in fetched.folder.rglob("*") if p.is_file()}
    assert on_disk == set(entry["files"])
    assert list((tmp_path / "store/staging").iterdir()) == []
    # The BOM's model card reads the config under model/, and names the registered model and version.
    from safeload._supply.bom import bom_model, build_bom

    bom = build_bom([bom_model(fetched, policy)])
    (component,) = [c for c in bom["components"] if c["type"] == "machine-learning-model"]
    assert component["modelCard"]["modelParameters"]["modelArchitecture"] == "BertForMaskedLM"
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert (props["safeload:mlflow:registered_model"], props["safeload:mlflow:version"]) == (
        "tiny-bert", logged.bert
    )
    assert props["safeload:mlflow:logged_model_id"] == entry["source"].removeprefix("models:/")


@pytest.mark.slow
def test_pytorch_model_weights_load_into_the_callers_module(tmp_path: Path, logged: Logged) -> None:
    import safeload.mlflow.pytorch

    entry = pin(logged.server, "tiny-net", logged.net, "pytorch")
    assert "data/model.pth" in entry["files"]
    policy = load_policy(policy_for(tmp_path, logged.server.endpoint, {"net": entry}))
    net = safeload.mlflow.pytorch.load_model(f"models:/tiny-net/{logged.net}", model=TinyNet(), policy=policy)
    with torch.no_grad():
        out = net(torch.tensor(NET_INPUT))
    assert torch.equal(out, torch.tensor(logged.reference["net"]))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        safeload.mlflow.pytorch.load_model("net", model=None, policy=policy)
    import safeload.mlflow.transformers

    with pytest.raises(Exception, match="flavor 'pytorch'"):
        safeload.mlflow.transformers.load_model("net", policy=policy)


@pytest.mark.slow
def test_a_file_overwritten_under_a_pinned_version_is_refused(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    files = {"MLmodel": b"flavors:\n  pytorch: {model_data: data}\n", "data/model.pth": b"\x01" * 64}
    version = mlflow_server.add_model("overwritten", files)
    entry = pin(mlflow_server, "overwritten", version, "pytorch")
    policy = load_policy(policy_for(tmp_path, mlflow_server.endpoint, {"m": entry}))
    root = mlflow_server.download_uri("overwritten", version).removeprefix("mlflow-artifacts:/")
    mlflow_server.put_artifact(f"{root}/data/model.pth", b"\x02" * 64)  # same size, same version
    with pytest.raises(IntegrityError, match=r"data/model\.pth"):
        fetch_model("m", policy=policy, progress=False)
    assert not (tmp_path / "store/models").exists() or not any((tmp_path / "store/models").rglob("*.pth"))
    assert list((tmp_path / "store/staging").iterdir()) == []


_CODE_MLMODEL = b"""flavors:
  python_function:
    loader_module: evil_loader
    code: code
    env: {virtualenv: python_env.yaml}
"""
_PYFUNC_MLMODEL = b"""flavors:
  python_function:
    loader_module: mlflow.pyfunc.model
    python_model: python_model.pkl
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["code", "python_model", "auto_map"],
)
def test_models_that_carry_code_are_refused(tmp_path: Path, mlflow_server: MlflowServer, case: str) -> None:
    import safeload.mlflow.transformers

    marker = tmp_path / "ran"
    payload = f"open({str(marker)!r}, 'w').write('x')\n".encode()
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "auto_map": {"AutoModel": "evil.M"}}
    tf = (
        b"flavors:\n  transformers:\n    code: null\n    model_binary: model\n    task: fill-mask\n"
        b"    pipeline_model_type: BertForMaskedLM\n    components: []\n"
    )
    files = {
        "code": {"MLmodel": _CODE_MLMODEL, "code/evil_loader.py": payload},
        "python_model": {"MLmodel": _PYFUNC_MLMODEL, "python_model.pkl": b"cos\nsystem\n(S'true'\ntR."},
        "auto_map": {
            "MLmodel": tf,
            "model/config.json": json.dumps(config).encode(),
            "model/evil.py": payload,
        },
    }[case]
    version = mlflow_server.add_model(f"attack-{case}", files)
    entry = pin(mlflow_server, f"attack-{case}", version, "transformers")
    policy = load_policy(policy_for(tmp_path, mlflow_server.endpoint, {"m": entry}))
    field = {"code": "code", "python_model": "python_model", "auto_map": "auto_map"}[case]
    with pytest.raises(UnsafeContentError, match=field):
        safeload.mlflow.transformers.load_model(f"models:/attack-{case}/{version}", policy=policy)
    assert not marker.exists()
    assert "evil" not in sys.modules and "evil_loader" not in sys.modules


@pytest.mark.slow
def test_pin_writes_the_entry_a_load_needs_and_resolves_an_alias_only_then(
    tmp_path: Path, logged: Logged
) -> None:
    import tomllib

    import safeload.mlflow.transformers
    from safeload._trust.pinning import pin_model

    server = logged.server
    policy_path = policy_for(tmp_path, server.endpoint, {})
    by_version = pin_model(f"mlflow://ml/tiny-bert/{logged.bert}", policy_path=policy_path, name="bert")[1]
    want = pin(server, "tiny-bert", logged.bert, "transformers")
    assert (by_version.revision, by_version.source, by_version.flavor) == (
        logged.bert, want["source"], "transformers"
    )
    assert dict(by_version.files) == want["files"] and dict(by_version.sizes) == want["sizes"]
    written = tomllib.loads(policy_path.read_text())["models"]["bert"]
    assert written["sizes"] == want["sizes"] and written["source"] == want["source"]
    policy = load_policy(policy_path)
    pipe = safeload.mlflow.transformers.load_model("bert", policy=policy)
    assert [f["token_str"] for f in pipe(SENTENCE)] == [w["token_str"] for w in logged.reference["fill"]]

    server.call("POST", "registered-models/alias",
                {"name": "tiny-bert", "alias": "champion", "version": logged.bert})
    by_alias = pin_model("mlflow://ml/tiny-bert@champion", policy_path=policy_path, name="champ")[1]
    assert by_alias.revision == logged.bert and dict(by_alias.files) == want["files"]
    assert by_alias.alias == "champion" and by_version.alias is None
    assert tomllib.loads(policy_path.read_text())["models"]["champ"]["alias"] == "champion"


@pytest.mark.slow
def test_pin_refuses_a_model_that_asks_to_run_its_code(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from safeload._trust.pinning import pin_model

    files = {"MLmodel": _PYFUNC_MLMODEL, "python_model.pkl": b"cos\nsystem\n(S'true'\ntR."}
    version = mlflow_server.add_model("pin-pyfunc", files)
    policy_path = policy_for(tmp_path, mlflow_server.endpoint, {})
    before = policy_path.read_text()
    with pytest.raises(UnsafeContentError, match="python_model"):
        pin_model(f"mlflow://ml/pin-pyfunc/{version}", policy_path=policy_path)
    assert policy_path.read_text() == before
    with pytest.raises(PolicyError, match="no mlflow registry by that name"):
        pin_model(f"mlflow://nope/pin-pyfunc/{version}", policy_path=policy_path)


def test_an_alias_is_refused_as_a_revision(tmp_path: Path) -> None:
    entry = {
        "registry": "ml", "repo": "m", "revision": "champion", "source": "models:/m-1", "flavor": "pytorch",
        "files": {"MLmodel": "sha256:" + "0" * 64},
    }  # fmt: skip
    with pytest.raises(PolicyError, match=r"models\.m\.revision: .*version number"):
        load_policy(policy_for(tmp_path, "http://127.0.0.1:1", {"m": entry}))
    import safeload.mlflow.transformers

    ok = dict(entry, revision="3")
    policy = load_policy(policy_for(tmp_path, "http://127.0.0.1:1", {"m": ok}))
    with pytest.raises(UntrustedSourceError, match="alias"):
        safeload.mlflow.transformers.load_model("models:/m@champion", policy=policy)


# ----------------------------------------------------------------------------------------- lying servers

BODY = b"\x03" * 64
PINNED = {"MLmodel": b"flavors:\n  pytorch: {model_data: data}\n", "data/model.pth": BODY}
SOURCE = "models:/m-0123456789abcdef"


@dataclass
class Liar:
    """An MLflow server that lies in one answer; ``seen`` records every request path and header."""

    uri: str = "mlflow-artifacts:/1/models/m-0123456789abcdef/artifacts"
    source: str = SOURCE
    served: dict[str, bytes] = field(default_factory=lambda: dict(PINNED))
    listed: dict[str, int] = field(default_factory=lambda: {k: len(v) for k, v in PINNED.items()})
    redirect: str | None = None
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def _serve(handle: Callable[[BaseHTTPRequestHandler], None]) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handle(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _liar_handler(liar: Liar) -> Callable[[BaseHTTPRequestHandler], None]:
    def handle(h: BaseHTTPRequestHandler) -> None:
        liar.seen.append((h.path, dict(h.headers)))
        path, _, query = h.path.partition("?")
        art = "/api/2.0/mlflow-artifacts/artifacts"
        if path == "/api/2.0/mlflow/model-versions/get":
            info = {"name": "m", "version": "3", "source": liar.source, "status": "READY"}
            _reply(h, 200, json.dumps({"model_version": info}).encode())
        elif path == "/api/2.0/mlflow/model-versions/get-download-uri":
            _reply(h, 200, json.dumps({"artifact_uri": liar.uri}).encode())
        elif path == art:
            want = urllib.parse.parse_qs(query)["path"][0]
            base = liar.uri.removeprefix("mlflow-artifacts:/")
            rel = want[len(base) + 1 :] if want != base else ""
            names: dict[str, dict[str, object]] = {}
            for f, size in liar.listed.items():
                if rel and not f.startswith(rel + "/"):
                    continue
                head, _, tail = f[len(rel) + 1 if rel else 0 :].partition("/")
                names[head] = (
                    {"path": head, "is_dir": True}
                    if tail
                    else {"path": head, "is_dir": False, "file_size": size}
                )
            _reply(h, 200, json.dumps({"files": list(names.values())}).encode())
        elif path.startswith(art + "/"):
            if liar.redirect is not None:
                _reply(h, 302, b"", Location=liar.redirect)
                return
            rel = path.split("/artifacts/", 2)[-1]
            _reply(h, 200, liar.served.get(rel, b"?"))
        else:
            _reply(h, 404, b"{}")

    return handle


@pytest.fixture
def catcher() -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    seen: list[tuple[str, dict[str, str]]] = []

    def handle(h: BaseHTTPRequestHandler) -> None:
        seen.append((h.path, dict(h.headers)))
        _reply(h, 200, BODY)

    server, url = _serve(handle)
    yield url, seen
    server.shutdown()


def _outside_store(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if "store" not in p.parts and p.name != "audit.jsonl")


def _lie_cases(catch: str) -> dict[str, tuple[dict[str, Any], type[Exception], str]]:
    """Each case: the Liar fields it changes, the error and what its message must say."""
    host = catch.removeprefix("http://")
    longer = dict(PINNED, **{"data/model.pth": BODY * 200})
    replaced = dict(PINNED, **{"data/model.pth": b"\x04" * 64})
    added = dict({k: len(v) for k, v in PINNED.items()}, **{"code/x.py": 3})
    return {
        "uri on another host": ({"uri": f"mlflow-artifacts://{host}/1/m"}, IntegrityError, "host-less"),
        "uri over http": ({"uri": f"{catch}/1/m"}, IntegrityError, "host-less"),
        "uri file://": ({"uri": "file:///etc"}, IntegrityError, "file:///etc"),
        "uri traversal": ({"uri": "mlflow-artifacts:/1/../../etc"}, IntegrityError, r"\.\."),
        "uri encoded": ({"uri": "mlflow-artifacts:/1/%2e%2e/etc"}, IntegrityError, "%2e"),
        "longer than listed": ({"served": longer}, IntegrityError, "more than 64 bytes, the file.s pinned"),
        "overwritten": ({"served": replaced}, IntegrityError, "expected sha256"),
        "another source": ({"source": "models:/m-ffff"}, IntegrityError, "source"),
        "a file added": ({"listed": added}, IntegrityError, r"code/x\.py"),
        "redirected download": ({"redirect": f"{catch}/steal"}, UntrustedSourceError, "redirect"),
    }


@pytest.mark.parametrize("case", list(_lie_cases("http://x")))
def test_lying_server_is_refused_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catcher: tuple[str, list[Any]], case: str
) -> None:
    catch, caught = catcher
    changes, error, match = _lie_cases(catch)[case]
    liar = Liar(**changes)
    server, endpoint = _serve(_liar_handler(liar))
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
        entry = {
            "registry": "ml", "repo": "m", "revision": "3", "source": SOURCE, "flavor": "pytorch",
            "files": {k: "sha256:" + hashlib.sha256(v).hexdigest() for k, v in PINNED.items()},
            "sizes": {k: len(v) for k, v in PINNED.items()},
        }  # fmt: skip
        policy = load_policy(policy_for(tmp_path / "p", endpoint, {"m": entry}, auth="token"))
        before = _outside_store(tmp_path)
        with pytest.raises(error, match=match):
            fetch_model("m", policy=policy, progress=False)
    finally:
        server.shutdown()
    assert caught == [], f"the second listener was reached: {caught}"
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for _, h in liar.seen)
    store = tmp_path / "p/store"
    assert not (store / "models").exists() or not any((store / "models").rglob("*"))
    assert list((store / "staging").iterdir()) == [] if (store / "staging").exists() else True
    for blob in store.rglob("*") if store.exists() else []:
        if blob.is_file() and blob.stat().st_size >= 64:
            assert blob.read_bytes() not in (BODY * 200, b"\x04" * 64), f"{blob} holds the served bytes"
    assert (
        sorted(p for p in tmp_path.rglob("*") if "store" not in p.parts and p.name != "audit.jsonl") == before
    )
