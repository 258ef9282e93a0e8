"""OCI registries that need a token (Docker's token protocol), against a real docker-registry with
``auth: token`` and a token service on another 127.0.0.1 port.

The user's credentials come from a docker config file; they must reach the token service only when the
policy names its host, never the registry's blob storage or any host the registry's challenge names.
Pull (in the fetch jail) and ``safeload push`` (from the host) both take the token dance.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeload._supply.publish import push_model
from safeload._trust.resolve import fetch_model
from safeload.errors import UntrustedSourceError
from safeload.policy import load_policy
from tests.helpers.ociregistry import OciRegistry, TokenService
from tests.helpers.signing import write_tiny_model
from tests.helpers.trust import write_policy


@pytest.fixture(scope="module")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenService]:
    service = TokenService(tmp_path_factory.mktemp("token"), {"alice": "correct horse"})
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, token_service: TokenService) -> Iterator[OciRegistry]:
    server = OciRegistry.start(tmp_path_factory.mktemp("oci-auth"), auth=token_service)
    try:
        yield server
    finally:
        server.stop()


def _login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: OciRegistry, password: str) -> None:
    config = tmp_path / "docker"
    config.mkdir(exist_ok=True)
    auth = base64.b64encode(f"alice:{password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)


def _policy(
    tmp_path: Path,
    registry: OciRegistry,
    token: TokenService,
    *,
    trust_realm: bool,
    models: dict[str, dict[str, object]] | None = None,
    store: str = "store",
) -> Path:
    source = tmp_path / "source"
    if not source.exists():
        write_tiny_model(source / "acme" / "tiny")
    hosts = [f"127.0.0.1:{token.port}"] if trust_realm else []
    return write_policy(
        tmp_path / f"trust-{store}.toml",
        store=tmp_path / store,
        registries={
            "local": {"kind": "directory", "path": str(source)},
            "oci": {"kind": "oci", "endpoint": registry.endpoint, "redirect_hosts": hosts},
        },
        models=models or {"acme/tiny": {"registry": "local", "repo": "acme/tiny", "files": _pins(source)}},
    )


def _pins(source: Path) -> dict[str, str]:
    import hashlib

    model = source / "acme" / "tiny"
    return {
        p.relative_to(model).as_posix(): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in model.rglob("*")
        if p.is_file()
    }


def test_push_and_pull_take_the_token_dance_with_the_docker_login(
    tmp_path: Path, registry: OciRegistry, token_service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    _login(tmp_path, monkeypatch, registry, "correct horse")
    policy = load_policy(_policy(tmp_path, registry, token_service, trust_realm=True))
    before = len(token_service.seen)
    pushed = push_model("acme/tiny", f"oci://{registry.host}/auth/tiny:v1", policy=policy, progress=False)
    asked = token_service.seen[before:]
    assert asked and all(s.get("authorization", "").startswith("Basic ") for s in asked)
    assert any("repository%3Aauth%2Ftiny%3Apull%2Cpush" in s["path"] for s in asked)

    from safeload._trust.pinning import render_entry

    entry = {
        "registry": "oci",
        "repo": "auth/tiny",
        "revision": pushed.digest,
        "files": dict(pushed.entry.files),
    }
    assert render_entry(pushed.entry).count(pushed.digest) == 1
    puller = load_policy(
        _policy(
            tmp_path, registry, token_service, trust_realm=True, models={"acme/tiny": entry}, store="pull"
        )
    )
    before = len(token_service.seen)
    fetched = fetch_model("acme/tiny", policy=puller, progress=False)
    assert dict(fetched.files) == dict(pushed.entry.files)
    assert len(token_service.seen) > before, "the pull never asked for a token"


def test_wrong_credentials_are_refused_with_how_to_log_in(
    tmp_path: Path, registry: OciRegistry, token_service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    _login(tmp_path, monkeypatch, registry, "wrong")
    policy = load_policy(_policy(tmp_path, registry, token_service, trust_realm=True))
    with pytest.raises(UntrustedSourceError, match=r"refused the credentials \(HTTP 401\); log in"):
        push_model("acme/tiny", f"oci://{registry.host}/auth/wrong:v1", policy=policy, progress=False)


def test_a_token_service_the_policy_does_not_name_gets_no_credentials(
    tmp_path: Path, registry: OciRegistry, token_service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry's challenge names the realm; a registry that lies would name a host of its own to
    collect the password. Without the realm's host in redirect_hosts, nothing is sent to it."""
    _login(tmp_path, monkeypatch, registry, "correct horse")
    digest = "sha256:" + "0" * 64
    models = {"m": {"registry": "oci", "repo": "auth/tiny", "revision": digest, "files": {"a": digest}}}
    policy = load_policy(_policy(tmp_path, registry, token_service, trust_realm=False, models=models))
    before = len(token_service.seen)
    with pytest.raises(UntrustedSourceError, match=r"asks for credentials to be sent to 'http://127\.0\.0\.1:"):
        fetch_model("m", policy=policy, progress=False)
    with pytest.raises(UntrustedSourceError, match="nothing was sent there"):
        push_model(
            "acme/tiny",
            f"oci://{registry.host}/auth/x:v1",
            policy=load_policy(_policy(tmp_path, registry, token_service, trust_realm=False, store="s2")),
            progress=False,
        )
    assert token_service.seen[before:] == []
