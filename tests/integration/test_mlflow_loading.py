"""safeload.mlflow loading what mlflow's own client logged, against plain mlflow, and attacking models.

One real ``mlflow server`` for the module (:mod:`tests.helpers.mlflowserver`). A throwaway process logs,
with mlflow's client: a scikit-learn pipeline as skops (a decision tree: its ``Tree`` type needs trust)
and a logistic regression as cloudpickle, a pytorch module as ``pt2`` (``torch.export``), a benign custom
pyfunc, and the attacks: a skops model whose own MLmodel trusts a type that runs code when rebuilt, a
cloudpickled pyfunc, a pytorch pickle whose module runs code on load, a ``loader_module`` shipped in a
``code:`` folder, and a sklearn pickle holding a lambda. Each is pinned with ``safeload pin``'s own code
where it pins (the code-bearing ones are refused there and pinned by hand), fetched and loaded through
``safeload.mlflow``; predictions are compared with plain mlflow's, computed in a second throwaway process,
which also loads the allowed pyfunc through ``allow_code`` and checks ``safeload.patch()`` on mlflow's
``load_model`` functions (this test process never imports mlflow). Every attack payload would append to a
canary file in a folder that exists while the models load; none may exist afterwards.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from safeload.errors import UnsafeContentError, UnsupportedFormatError
from safeload.policy import Policy, load_policy
from tests.helpers.mlflowserver import MlflowServer
from tests.helpers.tinynet import TinyNet
from tests.helpers.tripwire import Tripwire
from tests.helpers.trust import write_policy

if os.environ.get("CI"):
    import mlflow.server  # noqa: F401  (in CI a missing extra fails the run instead of skipping it)
else:
    pytest.importorskip("mlflow.server", reason="needs the mlflow extra (pip install 'safeload[mlflow]')")
pytest.importorskip("skops", reason="needs the sklearn extra (pip install 'safeload[sklearn]')")

ROOT = Path(__file__).resolve().parents[2]
X = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -3.0, 0.0], [-0.3, 0.8, 0.1, -2.0]]
BENIGN = ("sk-skops", "sk-pickle", "net-pt2", "pyfunc-double")
ATTACKS = ("evil-skops", "evil-pyfunc", "evil-torch", "evil-loader", "evil-lambda")

_LOG = textwrap.dedent(
    """
    import json, os, sys, pathlib, tempfile
    sys.path.insert(0, sys.argv[1])
    canaries = pathlib.Path(sys.argv[2])
    import mlflow, numpy as np, torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler
    from sklearn.tree import DecisionTreeClassifier
    from tests.helpers.tinynet import TinyNet
    from tests.helpers.tripwire import Tripwire, payload_code

    mlflow.set_tracking_uri(sys.stdin.readline().strip())  # imported while the server starts
    rng = np.random.RandomState(0)
    X = rng.randn(60, 4)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    sk_req = ["scikit-learn"]
    out = {}

    def log(key, flavor, model, **kw):
        info = flavor.log_model(model, name=key, registered_model_name=key, **kw)
        out[key] = str(info.registered_model_version)

    class Double(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.asarray(model_input) * 2.0

    class Evil(mlflow.pyfunc.PythonModel):
        def __init__(self, trip):
            self.trip = trip

        def predict(self, context, model_input, params=None):
            return model_input

    with mlflow.start_run():
        tree = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=3, random_state=0)).fit(X, y)
        log("sk-skops", mlflow.sklearn, tree, serialization_format="skops",
            skops_trusted_types=["sklearn.tree._tree.Tree"], pip_requirements=sk_req)
        log("sk-pickle", mlflow.sklearn, LogisticRegression().fit(X, y), serialization_format="cloudpickle",
            pyfunc_predict_fn="predict_proba", pip_requirements=sk_req)
        torch.manual_seed(5)
        log("net-pt2", mlflow.pytorch, TinyNet(), serialization_format="pt2",
            input_example=np.zeros((2, 4), dtype=np.float32), pip_requirements=["torch"])
        log("pyfunc-double", mlflow.pyfunc, None, python_model=Double(), pip_requirements=["numpy"])
        # the attacks: each would append to a canary file when loaded
        evil = LogisticRegression().fit(X, y)
        evil.tripwire = Tripwire(str(canaries / "evil-skops"))
        log("evil-skops", mlflow.sklearn, evil, serialization_format="skops",
            skops_trusted_types=["tests.helpers.tripwire.Tripwire"], pip_requirements=sk_req)
        log("evil-pyfunc", mlflow.pyfunc, None, python_model=Evil(Tripwire(str(canaries / "evil-pyfunc"))),
            pip_requirements=["numpy"])
        net = TinyNet()
        net.trip = Tripwire(str(canaries / "evil-torch"))
        log("evil-torch", mlflow.pytorch, net, serialization_format="pickle", pip_requirements=["torch"])
        code = pathlib.Path(tempfile.mkdtemp())
        (code / "evil_loader.py").write_text(
            payload_code(str(canaries / "evil-loader")) + "def _load_pyfunc(path):\\n    return None\\n")
        (code / "data").mkdir()
        (code / "data" / "x.txt").write_text("x")
        info = mlflow.pyfunc.log_model(name="evil-loader", loader_module="evil_loader",
            data_path=str(code / "data"), code_paths=[str(code / "evil_loader.py")], pip_requirements=[],
            registered_model_name="evil-loader")
        out["evil-loader"] = str(info.registered_model_version)
        lam = make_pipeline(FunctionTransformer(lambda a: a * 2), LogisticRegression()).fit(X, y)
        log("evil-lambda", mlflow.sklearn, lam, serialization_format="cloudpickle", pip_requirements=sk_req)
    print(json.dumps(out))
    """
)

_REFERENCE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    X = json.loads(sys.argv[2])
    import numpy as np, torch
    import safeload
    from safeload.errors import SafeloadError
    out = {}

    def attempt(fn):
        try:
            return ["ok", fn()]
        except SafeloadError as exc:
            return [type(exc).__name__, str(exc)]

    # patched before mlflow is imported: its flavors are patched as they are imported
    safeload.patch()
    import mlflow, mlflow.pyfunc, mlflow.pytorch, mlflow.sklearn, mlflow.transformers
    versions = json.loads(sys.stdin.readline())  # imported while the test pins the models
    uri = {k: f"models:/{k}/{v}" for k, v in versions.items()}
    def ours():
        code = lambda f: sys.modules[f"mlflow.{f}"].load_model.__code__.co_filename  # noqa: E731
        flavors = ("sklearn", "pytorch", "transformers", "pyfunc")
        return {f: code(f).endswith("/safeload/_patching.py") for f in flavors}
    out["patched_on_import"] = ours()
    safeload.unpatch()
    out["unpatched"] = ours()

    # plain mlflow, benign models only
    x = np.asarray(X)
    out["sk-skops"] = mlflow.sklearn.load_model(uri["sk-skops"]).predict(x).tolist()
    out["sk-pickle"] = mlflow.sklearn.load_model(uri["sk-pickle"]).predict(x).tolist()
    out["sk-pickle-pyfunc"] = mlflow.pyfunc.load_model(uri["sk-pickle"]).predict(x).tolist()
    with torch.no_grad():
        out["net-pt2"] = mlflow.pytorch.load_model(uri["net-pt2"])(torch.tensor(X)).tolist()
    out["pyfunc-double"] = np.asarray(mlflow.pyfunc.load_model(uri["pyfunc-double"]).predict(x)).tolist()

    # the entry allows this model's code: safeload fetches and verifies, then mlflow runs it
    import safeload.mlflow.pyfunc
    model = safeload.mlflow.pyfunc.load_model("pyfunc-double")
    out["allowed"] = [type(model).__module__, np.asarray(model.predict(x)).tolist()]

    # patched after mlflow is imported: mlflow's own names route through safeload
    with safeload.patch():
        out["patched"] = ours()
        out["patched-sklearn"] = attempt(lambda: mlflow.sklearn.load_model(uri["sk-skops"]))
        out["patched-pyfunc-evil"] = attempt(lambda: mlflow.pyfunc.load_model(uri["evil-pyfunc"]))
        out["patched-pytorch"] = attempt(lambda: mlflow.pytorch.load_model(uri["net-pt2"]))
        from tests.helpers.tinynet import TinyNet
        def pt2():
            with torch.no_grad():
                return mlflow.pytorch.load_model(uri["net-pt2"], model=TinyNet())(torch.tensor(X)).tolist()
        out["patched-pytorch-model"] = attempt(pt2)
        out["patched-local-path"] = attempt(lambda: mlflow.sklearn.load_model("/tmp"))
    out["restored"] = ours()
    print(json.dumps(out))
    """
)


@dataclass
class Logged:
    server: MlflowServer
    versions: dict[str, str]
    policy_path: Path
    canaries: Path
    reference: dict[str, Any]

    def policy(self) -> Policy:
        return load_policy(self.policy_path)

    def uri(self, key: str) -> str:
        return f"models:/{key}/{self.versions[key]}"


def _start(script: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A throwaway process that imports mlflow now and waits for one line on its stdin to go on."""
    return subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT), *args], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _finish(proc: subprocess.Popen[str], line: str) -> Any:
    out, err = proc.communicate(line + "\n", timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"mlflow client failed: {err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _hand_pin(server: MlflowServer, name: str, version: str, flavor: str, **extra: Any) -> dict[str, Any]:
    """The [models] entry of a version, from what the server serves now (what ``safeload pin`` writes,
    for the versions it refuses and without a jail per model)."""
    info = server.version(name, version)
    root = server.download_uri(name, version).removeprefix("mlflow-artifacts:/")
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    base = f"{server.endpoint}/api/2.0/mlflow-artifacts/artifacts"

    def walk(rel: str) -> None:
        path = f"{root}/{rel}" if rel else root
        with urllib.request.urlopen(f"{base}?path={urllib.parse.quote(path)}") as resp:
            listing = json.loads(resp.read())
        for item in listing.get("files", []):
            child = f"{rel}/{item['path']}" if rel else item["path"]
            if item.get("is_dir"):
                walk(child)
                continue
            with urllib.request.urlopen(f"{base}/{root}/{child}") as r:
                data = r.read()
            files[child] = "sha256:" + hashlib.sha256(data).hexdigest()
            sizes[child] = len(data)

    walk("")
    return {
        "registry": "ml", "repo": name, "revision": version, "source": info["source"], "flavor": flavor,
        **extra, "files": files, "sizes": sizes,
    }  # fmt: skip


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    from safeload._trust.pinning import pin_model

    root = tmp_path_factory.mktemp("mlflow-loading")
    canaries = root / "canaries"  # created only after logging: mlflow reloads a skops model to check it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SAFELOAD"))}
    env.update(HOME=str(root), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", HF_HUB_OFFLINE="1")
    logger = _start(_LOG, env, str(canaries))
    server: MlflowServer | None = None
    try:
        server = MlflowServer.start(root / "server")
        versions = _finish(logger, server.endpoint)
        policy_path = write_policy(
            root / "trust.toml", store=root / "store",
            registries={"ml": {"kind": "mlflow", "endpoint": server.endpoint}},
            models={
                key: _hand_pin(server, key, versions[key], flavor)
                for key, flavor in (
                    ("sk-pickle", "sklearn"), ("net-pt2", "pytorch"), ("evil-skops", "sklearn"),
                    ("evil-torch", "pytorch"), ("evil-lambda", "sklearn"),
                    ("evil-pyfunc", "python_function"), ("evil-loader", "python_function"),
                )
            },
            audit_log=root / "audit.jsonl",
        )  # fmt: skip
        env.update(server.client_env(), SAFELOAD_POLICY=str(policy_path))
        referee = _start(_REFERENCE, env, json.dumps(X))
        # safeload pin itself: the comment naming the types to trust, and a model allowed to run its code
        pin_model(f"mlflow://ml/sk-skops/{versions['sk-skops']}", policy_path=policy_path, name="sk-skops")
        url = f"mlflow://ml/pyfunc-double/{versions['pyfunc-double']}"
        with pytest.raises(UnsafeContentError, match=r"python_model.*allow_code = true"):
            pin_model(url, policy_path=policy_path, name="pyfunc-double")
        pin_model(url, policy_path=policy_path, name="pyfunc-double", allow_code=True)
        canaries.mkdir()
        reference = _finish(referee, json.dumps(versions))
        yield Logged(server, versions, policy_path, canaries, reference)
    finally:
        logger.kill()
        if server is not None:
            server.stop()


def _no_trace(logged: Logged) -> None:
    assert sorted(p.name for p in logged.canaries.iterdir()) == []
    assert "evil_loader" not in sys.modules


# ------------------------------------------------------------------------------------------- flavors


@pytest.mark.slow
def test_sklearn_skops_loads_trusting_only_the_entrys_types(tmp_path: Path, logged: Logged) -> None:
    import safeload.mlflow.sklearn

    text = logged.policy_path.read_text()
    # pin leaves the list to the user: commented, with the types this model needs
    assert '# trusted_types = ["sklearn.tree._tree.Tree"]' in text
    with pytest.raises(UnsafeContentError, match=r"sklearn\.tree\._tree\.Tree.*trusted_types = \["):
        safeload.mlflow.sklearn.load_model(logged.uri("sk-skops"), policy=logged.policy())
    trusting = tmp_path / "trust.toml"
    trusting.write_text(
        text.replace(
            "[models.sk-skops]\n", '[models.sk-skops]\ntrusted_types = ["sklearn.tree._tree.Tree"]\n'
        )
    )
    policy = load_policy(trusting)
    assert policy.models["sk-skops"].trusted_types == ("sklearn.tree._tree.Tree",)
    model = safeload.mlflow.sklearn.load_model(logged.uri("sk-skops"), policy=policy)
    assert model.predict(X).tolist() == logged.reference["sk-skops"]
    import safeload.mlflow.pyfunc

    wrapped = safeload.mlflow.pyfunc.load_model("sk-skops", policy=policy)
    assert wrapped.predict(X).tolist() == logged.reference["sk-skops"]
    assert wrapped.get_raw_model().__class__.__name__ == "Pipeline"


@pytest.mark.slow
def test_sklearn_cloudpickle_is_unpickled_only_in_the_jail(logged: Logged) -> None:
    import safeload.mlflow.pyfunc

    # through pyfunc, to convert once: the estimator is what safeload.mlflow.sklearn returns
    wrapped = safeload.mlflow.pyfunc.load_model(logged.uri("sk-pickle"), policy=logged.policy())
    assert wrapped.predict_fn == "predict_proba"
    assert wrapped.predict(X).tolist() == logged.reference["sk-pickle-pyfunc"]
    model = wrapped.get_raw_model()
    assert type(model).__name__ == "LogisticRegression"
    assert model.predict(X).tolist() == logged.reference["sk-pickle"]


@pytest.mark.slow
def test_pytorch_pt2_weights_are_read_without_torch_export(logged: Logged) -> None:
    import safeload.mlflow.pyfunc
    import safeload.mlflow.pytorch

    net = safeload.mlflow.pytorch.load_model(logged.uri("net-pt2"), model=TinyNet(), policy=logged.policy())
    with torch.no_grad():
        assert net(torch.tensor(X)).tolist() == logged.reference["net-pt2"]
    with pytest.raises(UnsupportedFormatError, match=r"safeload\.mlflow\.pytorch\.load_model\(uri, model="):
        safeload.mlflow.pyfunc.load_model(logged.uri("net-pt2"), policy=logged.policy())


@pytest.mark.slow
def test_a_pyfunc_with_code_runs_only_when_its_entry_allows_code(logged: Logged) -> None:
    import safeload.mlflow.pyfunc

    module, predicted = logged.reference["allowed"]
    assert module.startswith("mlflow.")  # mlflow's own PyFuncModel, on the verified folder
    assert predicted == logged.reference["pyfunc-double"]
    entry = logged.policy().models["pyfunc-double"]
    assert entry.allow_code and entry.flavor == "python_function"
    with pytest.raises(UnsafeContentError, match=r"python_model.*allow_code = true"):
        safeload.mlflow.pyfunc.load_model(logged.uri("evil-pyfunc"), policy=logged.policy())
    _no_trace(logged)


@pytest.mark.slow
def test_patch_routes_mlflows_load_model_through_safeload(logged: Logged) -> None:
    ref = logged.reference
    every = {"sklearn": True, "pytorch": True, "transformers": True, "pyfunc": True}
    assert ref["patched_on_import"] == every and ref["patched"] == every
    assert not any(ref["unpatched"].values()) and not any(ref["restored"].values())
    # the entry trusts none of the model's types: mlflow's own name, safeload's refusal
    assert (
        ref["patched-sklearn"][0] == "UnsafeContentError"
        and "sklearn.tree._tree.Tree" in ref["patched-sklearn"][1]
    )
    assert (
        ref["patched-pyfunc-evil"][0] == "UnsafeContentError"
        and "python_model" in ref["patched-pyfunc-evil"][1]
    )
    assert ref["patched-pytorch"][0] == "UnsupportedFormatError" and "model=" in ref["patched-pytorch"][1]
    assert ref["patched-pytorch-model"] == ["ok", ref["net-pt2"]]
    assert ref["patched-local-path"][0] == "UntrustedSourceError"
    _no_trace(logged)


# ------------------------------------------------------------------------------------------- attacks


@pytest.mark.slow
@pytest.mark.parametrize("key", ATTACKS)
def test_attacking_models_leave_no_trace(logged: Logged, key: str) -> None:
    import safeload.mlflow.pyfunc
    import safeload.mlflow.pytorch
    import safeload.mlflow.sklearn

    policy = logged.policy()
    uri = logged.uri(key)
    if key == "evil-skops":  # the model's own MLmodel trusts the type; the entry does not
        with pytest.raises(UnsafeContentError, match=r"tests\.helpers\.tripwire\.Tripwire"):
            safeload.mlflow.sklearn.load_model(uri, policy=policy)
    elif key == "evil-pyfunc":
        with pytest.raises(UnsafeContentError, match="python_model"):
            safeload.mlflow.pyfunc.load_model(uri, policy=policy)
    elif key == "evil-loader":
        with pytest.raises(
            UnsafeContentError, match=r"MLmodel (code|flavors\.python_function\.(code|loader_module))"
        ):
            safeload.mlflow.pyfunc.load_model(uri, policy=policy)
    elif key == "evil-lambda":
        with pytest.raises(UnsafeContentError, match="FunctionTransformer"):
            safeload.mlflow.sklearn.load_model(uri, policy=policy)
    else:  # the module pickled by value is read inertly; only its weights reach the caller's module
        net = safeload.mlflow.pytorch.load_model(uri, model=TinyNet(), policy=policy)
        assert set(net.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "scale"}
    _no_trace(logged)


# ------------------------------------------------------------------------------- pt2 archives, crafted


def _pt2(tmp_path: Path) -> Path:
    """A real torch.export archive of TinyNet, written in this process (saving runs nothing)."""
    torch.manual_seed(1)
    program = torch.export.export(TinyNet(), (torch.zeros(2, 4),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    return path


def _rewrite(path: Path, change: dict[str, bytes]) -> Path:
    out = path.with_name("changed.pt2")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        names = src.namelist()
        for name in names:
            dst.writestr(name, change.get(name, src.read(name)))
        for name, data in change.items():
            if name not in names:
                dst.writestr(name, data)
    return out


def _config(path: Path) -> tuple[str, dict[str, Any]]:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("_weights_config.json"))
        return name, json.loads(zf.read(name))


def test_pt2_reader_matches_torch_and_bounds_its_views(tmp_path: Path) -> None:
    from safeload.mlflow._pt2 import read_weights

    path = _pt2(tmp_path)
    policy = load_policy(write_policy(tmp_path / "trust.toml", store=tmp_path / "store"))
    got = read_weights(str(path), "t", policy)
    torch.manual_seed(1)
    assert got.keys() == TinyNet().state_dict().keys()
    torch.manual_seed(1)
    for k, v in TinyNet().state_dict().items():
        assert torch.equal(got[k], v), k
    name, config = _config(path)
    config["config"]["fc1.weight"]["tensor_meta"]["storage_offset"] = {"as_int": 10_000}
    with pytest.raises(UnsupportedFormatError, match=r"fc1\.weight reaches element"):
        read_weights(str(_rewrite(path, {name: json.dumps(config).encode()})), "t", policy)
    name, config = _config(path)
    config["config"]["fc1.weight"]["path_name"] = "../../etc/passwd"
    with pytest.raises(UnsupportedFormatError, match="names the record"):
        read_weights(str(_rewrite(path, {name: json.dumps(config).encode()})), "t", policy)


@pytest.mark.slow
def test_pt2_pickled_weights_go_to_the_jail_and_code_in_the_archive_never_runs(tmp_path: Path) -> None:
    from safeload.mlflow._pt2 import read_weights

    canaries = tmp_path / "canaries"
    canaries.mkdir()
    path = _pt2(tmp_path)
    policy = load_policy(write_policy(tmp_path / "trust.toml", store=tmp_path / "store"))
    name, config = _config(path)
    prefix = name.split("/", 1)[0]
    weights = name.rsplit("/", 1)[0]
    torch.manual_seed(1)
    fc2 = TinyNet().state_dict()["fc2.weight"]
    good, evil, inputs = io.BytesIO(), io.BytesIO(), io.BytesIO()
    torch.save(fc2, good)
    torch.save({"evil": Tripwire(str(canaries / "weight"))}, evil)
    torch.save((Tripwire(str(canaries / "inputs")),), inputs)
    config["config"]["fc2.weight"]["use_pickle"] = True
    config["config"]["fc2.weight"]["path_name"] = "weight_90"
    changed = _rewrite(path, {
        name: json.dumps(config).encode(), f"{weights}/weight_90": good.getvalue(),
        f"{prefix}/data/sample_inputs/model.pt": inputs.getvalue(),
    })  # fmt: skip
    got = read_weights(str(changed), "t", policy)
    assert torch.equal(got["fc2.weight"], fc2)
    changed = _rewrite(path, {name: json.dumps(config).encode(), f"{weights}/weight_90": evil.getvalue()})
    with pytest.raises(UnsafeContentError, match=r"fc2\.weight is not a tensor"):
        read_weights(str(changed), "t", policy)
    assert list(canaries.iterdir()) == []
