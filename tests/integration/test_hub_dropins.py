"""safeload.hub drop-ins and safeload._trust.pinning against the real Hub (olah)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.errors import EntryNotFoundError

from safeload._trust.pinning import pin_model
from safeload._trust.resolve import fetch_model
from safeload.errors import IntegrityError, PolicyError, UntrustedSourceError
from safeload.hub import UnpinnedFileError, hf_hub_download, snapshot_download
from safeload.policy import load_policy
from tests.helpers.trust import pins, write_policy
from tests.integration.conftest import TINY, SessionHub

FILES = {
    "config.json": b'{"model_type": "bert"}',
    "model.safetensors": b"S" * 1000,
    "extra.txt": b"not pinned",
}


@pytest.fixture(scope="module")
def dropin_repo(hub: SessionHub) -> str:
    return hub.add_repo("dropin/model", FILES)


def _policy(tmp_path: Path, hub: SessionHub, sha: str) -> Path:
    pinned = pins({k: FILES[k] for k in ("config.json", "model.safetensors")})
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
        models={"dropin/model": {"registry": "hub", "revision": sha, "files": pinned}},
    )


def test_snapshot_download_returns_the_verified_folder(
    tmp_path: Path, hub: SessionHub, dropin_repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFELOAD_POLICY", str(_policy(tmp_path, hub, dropin_repo)))
    folder = Path(snapshot_download("dropin/model", revision="main", cache_dir="/ignored", max_workers=8))
    assert folder.is_relative_to(tmp_path / "store/models")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert snapshot_download("dropin/model", revision=dropin_repo) == str(folder)
    with pytest.raises(UntrustedSourceError, match="the policy pins"):
        snapshot_download("dropin/model", revision="0" * 40)
    with pytest.raises(UntrustedSourceError, match=r"not in the policy's \[datasets\]"):
        snapshot_download("dropin/model", repo_type="dataset")  # a model is not a dataset
    with pytest.raises(UntrustedSourceError, match="repo_type"):
        snapshot_download("dropin/model", repo_type="space")
    with pytest.raises(UntrustedSourceError, match="safeload pin"):
        snapshot_download(TINY)


def test_hf_hub_download_serves_only_pinned_files(
    tmp_path: Path, hub: SessionHub, dropin_repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = _policy(tmp_path, hub, dropin_repo)
    path = Path(hf_hub_download("dropin/model", "config.json", policy=str(policy)))
    assert path.read_bytes() == FILES["config.json"]
    assert path.parent.is_relative_to(tmp_path / "store/models")
    with pytest.raises(UnpinnedFileError) as info:
        hf_hub_download("dropin/model", "extra.txt", policy=str(policy))
    # Callers that probe optional files with huggingface_hub's exception keep working.
    assert isinstance(info.value, EntryNotFoundError) and isinstance(info.value, UntrustedSourceError)


POLICY_HEAD = """# production policy; keep this comment
version = 1
store = "{store}"

[registries.hub]  # the mirror
kind = "huggingface"
endpoint = "{endpoint}"

[models."other"]
registry = "hub"
repo = "x/y"
revision = "{zero}"
files = {{ "a" = "sha256:{zero64}" }}
"""


def test_pin_model_writes_a_verifiable_entry_and_keeps_the_rest(
    tmp_path: Path, hub: SessionHub, dropin_repo: str
) -> None:
    path = tmp_path / "trust.toml"
    head = POLICY_HEAD.format(store=tmp_path / "store", endpoint=hub.endpoint, zero="0" * 40, zero64="0" * 64)
    path.write_text(head)
    name, entry = pin_model(
        f"hf://dropin/model@{dropin_repo}", policy_path=path, registry=None, name="acme/m", resolve=False
    )
    assert name == "acme/m" and entry.revision == dropin_repo and entry.repo == "dropin/model"
    assert dict(entry.files) == pins(FILES)
    text = path.read_text()
    assert text.startswith(head.rstrip("\n"))  # comments and other entries untouched
    policy = load_policy(path)
    assert policy.models["acme/m"] == entry and "other" in policy.models
    got = fetch_model("acme/m", policy=policy, progress=False)
    assert sorted(got.files) == sorted(FILES)

    # Re-pinning replaces the entry instead of duplicating it.
    newer = hub.add_repo("dropin/model", {"extra.txt": b"changed"})
    _, again = pin_model(
        "hf://dropin/model@main", policy_path=path, registry="hub", name="acme/m", resolve=True
    )
    assert again.revision == newer and again.files["extra.txt"] != entry.files["extra.txt"]
    assert path.read_text().count('[models."acme/m"]') == 1
    assert load_policy(path).models["acme/m"] == again


def test_pin_model_refuses_branches_without_resolve_and_checks_server_digests(
    tmp_path: Path, hub: SessionHub
) -> None:
    path = tmp_path / "trust.toml"
    path.write_text(
        f'version = 1\nstore = "{tmp_path / "store"}"\n'
        f'[registries.hub]\nkind = "huggingface"\nendpoint = "{hub.endpoint}"\n'
    )
    with pytest.raises(PolicyError, match="40-hex commit"):
        pin_model("hf://dropin/model@main", policy_path=path, registry=None, name=None, resolve=False)
    with pytest.raises(PolicyError, match="expected hf://"):
        pin_model("https://huggingface.co/x/y", policy_path=path, registry=None, name=None, resolve=False)
    sha = hub.add_repo("pin/tampered", {"w.safetensors": b"1" * 500})
    hub.replace_blob("pin/tampered", "w.safetensors", b"2" * 500)
    with pytest.raises(IntegrityError):
        pin_model(f"hf://pin/tampered@{sha}", policy_path=path, registry=None, name=None, resolve=False)
    assert "pin/tampered" not in path.read_text()


def test_pin_model_directory_registry(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "acme/local").mkdir(parents=True)
    (root / "acme/local/w.safetensors").write_bytes(b"L" * 100)
    (root / "acme/local/sub").mkdir()
    (root / "acme/local/sub/config.json").write_bytes(b"{}")
    path = tmp_path / "trust.toml"
    path.write_text(f'version = 1\nstore = "store"\n[registries.disk]\nkind = "directory"\npath = "{root}"\n')
    name, entry = pin_model("dir://acme/local", policy_path=path, registry=None, name=None, resolve=False)
    assert name == "acme/local" and entry.revision is None
    assert set(entry.files) == {"w.safetensors", "sub/config.json"}
    got = fetch_model("acme/local", policy=load_policy(path), progress=False)
    assert (got.folder / "sub/config.json").read_bytes() == b"{}"
    assert got.folder.name == entry.store_revision()
