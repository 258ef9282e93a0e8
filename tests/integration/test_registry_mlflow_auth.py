"""MLflow registries behind basic auth, aliases at load time, and the CLI commands on mlflow entries.

One real ``mlflow server --app-name basic-auth`` per module (:mod:`tests.helpers.mlflowauth`), where
nobody may read by default; a reader gets READ on the registered model and on the experiment holding its
files. Two versions of a tiny pytorch model (different weights) are registered through REST. The reader
pins, fetches and loads with credentials from the environment or from a credentials file; a wrong
password, missing credentials and a file others may read are refused with errors that say what to do.
An entry pinned from an alias loads by that alias after the alias moved on the server, which is never
asked for it. A lying server (the one of ``test_registry_mlflow``) that names a second listener gets no
credentials sent there. ``prefetch``, ``verify``, ``verify --gate``, ``bom`` and ``push`` (to a real OCI
registry) work on the mlflow entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib
import torch

from safeload._trust.pinning import pin_model
from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, PolicyError, UntrustedSourceError
from safeload.policy import load_policy
from tests.helpers.tinynet import TinyNet
from tests.helpers.trust import write_policy

if os.environ.get("CI"):
    import mlflow.server.auth  # noqa: F401  (in CI a missing extra fails the run instead of skipping it)
else:
    pytest.importorskip("flask_wtf", reason="needs mlflow's auth extra (pip install 'mlflow[auth]')")

from tests.helpers.mlflowauth import AuthMlflowServer, basic

pytestmark = pytest.mark.slow

READER, PASSWORD = "reader", "reader-password-for-tests"
MLMODEL = b"flavors:\n  pytorch: {model_data: data, pytorch_version: 2.13.0}\n"
ENV_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def _weights(seed: int) -> tuple[dict[str, torch.Tensor], bytes]:
    torch.manual_seed(seed)
    state = TinyNet().state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    return state, buf.getvalue()


@dataclass
class Served:
    server: AuthMlflowServer
    # version -> the state dict it holds
    states: dict[str, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = AuthMlflowServer.start(tmp_path_factory.mktemp("mlflow-auth"))
    try:
        states: dict[str, dict[str, torch.Tensor]] = {}
        for seed in (1, 2):
            state, data = _weights(seed)
            version = server.add_model("net", {"MLmodel": MLMODEL, "data/model.pth": data})
            states[version] = state
        server.add_user(READER, PASSWORD)
        server.grant(READER, "registered_model", "net")
        server.grant(READER, "experiment", "0")  # add_model logs into the Default experiment
        yield Served(server=server, states=states)
    finally:
        server.stop()


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def reader_env(no_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    no_env.setenv("MLFLOW_TRACKING_USERNAME", READER)
    no_env.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    return no_env


def _policy(tmp_path: Path, endpoint: str, models: dict[str, Any] | None = None, **registry: Any) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"ml": {"kind": "mlflow", "endpoint": endpoint, "auth": "basic", **registry}},
        models=models or {},
    )


def _load(name: str, policy: Any) -> TinyNet:
    import safeload.mlflow.pytorch

    net = safeload.mlflow.pytorch.load_model(name, model=TinyNet(), policy=policy)
    assert isinstance(net, TinyNet)
    return net


def _same(net: TinyNet, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# ----------------------------------------------------------------------------------------------- auth


def test_a_reader_pins_fetches_and_loads_with_credentials_from_the_environment(
    tmp_path: Path, served: Served, reader_env: pytest.MonkeyPatch
) -> None:
    policy_path = _policy(tmp_path, served.server.endpoint)
    name, entry = pin_model("mlflow://ml/net/1", policy_path=policy_path)
    assert (name, entry.revision, entry.flavor, entry.alias) == ("net", "1", "pytorch", None)
    assert entry.run_id and entry.run_id in str(entry.source)
    net = _load("models:/net/1", load_policy(policy_path))
    assert _same(net, served.states["1"])


def test_credentials_come_from_a_file_only_its_owner_may_read(
    tmp_path: Path, served: Served, no_env: pytest.MonkeyPatch
) -> None:
    secret = _secret(tmp_path / "mlflow-credentials", f'username = "{READER}"\npassword = "{PASSWORD}"\n')
    policy_path = _policy(tmp_path, served.server.endpoint, credentials=str(secret))
    no_env.setenv("MLFLOW_TRACKING_USERNAME", "someone-else")  # the file the policy names wins
    no_env.setenv("MLFLOW_TRACKING_PASSWORD", "not-this-one")
    pin_model("mlflow://ml/net/2", policy_path=policy_path)
    assert _same(_load("models:/net/2", load_policy(policy_path)), served.states["2"])

    (tmp_path / "store").rename(tmp_path / "old-store")  # a cold fetch again, with a file others can read
    secret.chmod(0o644)
    with pytest.raises(PolicyError, match=r"readable by others \(mode 0644\).*chmod 600 " + str(secret)):
        fetch_model("net", policy=load_policy(policy_path), progress=False)
    secret.chmod(0o600)
    _secret(secret, 'username = "reader"\n')
    with pytest.raises(PolicyError, match="password"):
        fetch_model("net", policy=load_policy(policy_path), progress=False)
    secret.unlink()
    with pytest.raises(PolicyError, match="cannot read the credentials file"):
        fetch_model("net", policy=load_policy(policy_path), progress=False)


def test_a_wrong_password_is_refused_credentials_not_tampering(
    tmp_path: Path, served: Served, reader_env: pytest.MonkeyPatch
) -> None:
    reader_env.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-entirely")
    policy_path = _policy(tmp_path, served.server.endpoint)
    with pytest.raises(UntrustedSourceError, match=r"refused the credentials \(HTTP 401\).*MLFLOW_TRACKING_"):
        pin_model("mlflow://ml/net/1", policy_path=policy_path)


def test_missing_credentials_name_the_variables_and_the_credentials_file(
    tmp_path: Path, served: Served, no_env: pytest.MonkeyPatch
) -> None:
    policy_path = _policy(tmp_path, served.server.endpoint)
    with pytest.raises(
        PolicyError, match=r"MLFLOW_TRACKING_USERNAME.*MLFLOW_TRACKING_PASSWORD.*credentials ="
    ):
        pin_model("mlflow://ml/net/1", policy_path=policy_path)
    # A registry with no auth at all, against a server that wants it: the 401 says how to give some.
    open_path = _policy(tmp_path / "open", served.server.endpoint, auth="none")
    with pytest.raises(UntrustedSourceError, match=r'asks for credentials \(HTTP 401\).*auth = "basic"'):
        pin_model("mlflow://ml/net/1", policy_path=open_path)


def test_credentials_never_reach_a_second_listener(tmp_path: Path, no_env: pytest.MonkeyPatch) -> None:
    """A lying server names a second listener (another 127.0.0.1 port) as the files' host, or redirects a
    download there: nothing is sent to it, and the Basic credentials went to the endpoint only."""
    from tests.integration.test_registry_mlflow import (
        BODY,
        PINNED,
        SOURCE,
        Liar,
        _liar_handler,
        _reply,
        _serve,
    )

    seen: list[tuple[str, dict[str, str]]] = []

    def catch(h: Any) -> None:
        seen.append((h.path, dict(h.headers)))
        _reply(h, 200, BODY)

    catcher, catch_url = _serve(catch)
    secret = _secret(tmp_path / "creds", f'username = "{READER}"\npassword = "{PASSWORD}"\n')
    want = basic(READER, PASSWORD)
    try:
        host = catch_url.removeprefix("http://")
        for i, lie in enumerate(
            [
                {"uri": f"mlflow-artifacts://{host}/1/models/m-0123456789abcdef/artifacts"},
                {"uri": f"{catch_url}/1/models/m-0123456789abcdef/artifacts"},
                {"redirect": f"{catch_url}/api/2.0/mlflow-artifacts/artifacts/steal"},
            ]
        ):
            liar = Liar(**lie)  # type: ignore[arg-type]
            server, endpoint = _serve(_liar_handler(liar))
            try:
                entry = {
                    "registry": "ml", "repo": "m", "revision": "3", "source": SOURCE, "flavor": "pytorch",
                    "files": {k: "sha256:" + hashlib.sha256(v).hexdigest() for k, v in PINNED.items()},
                }  # fmt: skip
                policy = load_policy(
                    _policy(tmp_path / str(i), endpoint, {"m": entry}, credentials=str(secret))
                )
                with pytest.raises((UntrustedSourceError, IntegrityError)):
                    fetch_model("m", policy=policy, progress=False)
            finally:
                server.shutdown()
            assert liar.seen and all(h.get("Authorization") == want for _, h in liar.seen)
    finally:
        catcher.shutdown()
    assert seen == [], f"the second listener was reached: {seen}"


# -------------------------------------------------------------------------------------------- aliases


def test_an_alias_loads_the_version_it_was_pinned_from_without_asking_the_server(
    tmp_path: Path, served: Served, reader_env: pytest.MonkeyPatch
) -> None:
    server = served.server
    server.call("POST", "registered-models/alias", {"name": "net", "alias": "champion", "version": "1"})
    policy_path = _policy(tmp_path, server.endpoint)
    _, entry = pin_model("mlflow://ml/net@champion", policy_path=policy_path, name="net-champion")
    assert (entry.revision, entry.alias) == ("1", "champion")
    written = tomllib.loads(policy_path.read_text())["models"]["net-champion"]
    assert (written["revision"], written["alias"]) == ("1", "champion")

    server.call("POST", "registered-models/alias", {"name": "net", "alias": "champion", "version": "2"})
    asked = len(server.requests())
    policy = load_policy(policy_path)
    assert _same(_load("models:/net@champion", policy), served.states["1"])  # a cold fetch
    after = server.requests()[asked:]
    assert after and not [r for r in after if "alias" in r], after
    assert any("model-versions/get" in r for r in after)  # it did go to the server, for version 1

    with pytest.raises(UntrustedSourceError, match=r"no \[models\] entry .*pinned from alias 'challenger'"):
        _load("models:/net@challenger", policy)
    # Two entries that say they were pinned from the same alias: the URI does not say which.
    pin_model("mlflow://ml/net@champion", policy_path=policy_path, name="net-champion-2")
    with pytest.raises(UntrustedSourceError, match="net-champion, net-champion-2"):
        _load("models:/net@champion", load_policy(policy_path))


def test_an_alias_in_an_entry_is_checked() -> None:
    from safeload.policy import parse_policy

    base = (
        'version = 1\n[registries.ml]\nkind = "mlflow"\nendpoint = "http://127.0.0.1:1"\n'
        '[models.m]\nregistry = "ml"\nrepo = "m"\nrevision = "3"\nsource = "models:/m-1"\n'
        'flavor = "pytorch"\nalias = "{alias}"\n[models.m.files]\n"MLmodel" = "sha256:' + "0" * 64 + '"\n'
    )
    assert parse_policy(base.replace("{alias}", "champion")).models["m"].alias == "champion"
    with pytest.raises(PolicyError, match=r"models\.m\.alias: "):
        parse_policy(base.replace("{alias}", "../x"))


# ------------------------------------------------------------------------------- the CLI on an entry


@pytest.fixture(scope="module")
def pinned(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A policy with the reader's credentials file and ``net`` version 1 pinned (as ``net``)."""
    root = tmp_path_factory.mktemp("mlflow-cli")
    secret = _secret(root / "creds", f'username = "{READER}"\npassword = "{PASSWORD}"\n')
    policy_path = _policy(root, served.server.endpoint, credentials=str(secret))
    pin_model("mlflow://ml/net/1", policy_path=policy_path)
    yield policy_path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    from safeload.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith(("{", "[")) else out


def test_prefetch_fetches_an_mlflow_entry(pinned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(capsys, "prefetch", "net", "--policy", str(pinned), "--json")
    assert code == 0, out
    (model,) = out["models"]
    assert model["name"] == "net" and model["revision"] == "1"
    assert sorted(p.relative_to(model["folder"]).as_posix() for p in Path(model["folder"]).rglob("*")
                  if p.is_file()) == ["MLmodel", "data/model.pth"]  # fmt: skip


def test_verify_and_the_gate_pass_an_mlflow_entry(pinned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, verdict = _cli(capsys, "verify", "--gate", "net", "--policy", str(pinned), "--json")
    assert code == 0 and verdict["verdict"] == "pass", verdict
    mlmodel = next(c for c in verdict["checks"] if c["check"] == "mlmodel")
    assert mlmodel["ok"] and "pytorch" in mlmodel["detail"]
    code, out = _cli(capsys, "verify", "net", "--policy", str(pinned), "--json")
    assert code == 0, out
    assert [(m["name"], m["status"]) for m in out["models"]] == [("net", "ok")]


def test_the_bom_names_the_registered_model_version_run_and_logged_model(
    pinned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "bom.json"
    code, out = _cli(capsys, "bom", "net", "--policy", str(pinned), "-o", str(out_path))
    assert code == 0, out
    bom = json.loads(out_path.read_text())
    (model,) = [c for c in bom["components"] if c.get("type") == "machine-learning-model"]
    props = {p["name"]: p["value"] for p in model["properties"]}
    entry = load_policy(pinned).models["net"]
    assert props["safeload:registry:kind"] == "mlflow"
    assert props["safeload:mlflow:registered_model"] == "net"
    assert props["safeload:mlflow:version"] == "1"
    assert props["safeload:mlflow:run_id"] == entry.run_id
    assert props["safeload:mlflow:source"] == entry.source
    assert props["safeload:mlflow:flavor"] == "pytorch"
    # add_model registers a run's folder: no LoggedModel behind it, so none is named.
    assert "safeload:mlflow:logged_model_id" not in props


def test_push_publishes_an_mlflow_model_to_an_oci_registry(
    pinned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.helpers.ociregistry import OciRegistry

    registry = OciRegistry.start(tmp_path / "oci")
    try:
        text = pinned.read_text() + f'\n[registries.oci]\nkind = "oci"\nendpoint = "{registry.endpoint}"\n'
        policy_path = tmp_path / "trust.toml"
        policy_path.write_text(text)
        source = fetch_model("net", policy=load_policy(policy_path), progress=False)
        target = f"oci://{registry.host}/mlflow/net:v1"
        code, out = _cli(capsys, "push", "net", target, "--policy", str(policy_path), "--json")
        assert code == 0, out
        other = tmp_path / "puller"
        other.mkdir()
        (other / "trust.toml").write_text(
            f'version = 1\nstore = "{other / "store"}"\n'
            f'[registries.oci]\nkind = "oci"\nendpoint = "{registry.endpoint}"\n' + out["entry"]
        )
        pulled = fetch_model("net", policy=load_policy(other / "trust.toml"), progress=False)
        assert dict(pulled.files) == dict(source.files)
    finally:
        registry.stop()
