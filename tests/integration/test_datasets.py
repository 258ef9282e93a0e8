"""``[datasets]`` entries: pinned like models, fetched from the Hub-compatible test server (its dataset
repositories) and from a directory registry into the verified store, resolved by
``safeload.hub.snapshot_download(repo_type="dataset")``, covered by ``prefetch`` and ``verify``; a
tampered dataset file is refused and leaves nothing in the store.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from safeload._trust.pinning import pin_model
from safeload._trust.resolve import fetch_dataset
from safeload.errors import IntegrityError, PolicyError, UntrustedSourceError
from safeload.policy import load_policy, parse_policy
from tests.helpers.trust import write_policy
from tests.integration.conftest import SessionHub

TRAIN = b"text,label\nthe weights were verified,1\nthe pickle ran,0\n" * 50
SHARD = bytes(range(256)) * 400  # stored as an LFS object (its sha256 is what the Hub declares)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def dataset_commit(hub: SessionHub) -> str:
    return hub.add_repo(
        "acme/reviews",
        {"data/train.csv": TRAIN, "data/train-00000.safetensors": SHARD, "README.md": b"# reviews\n"},
        repo_type="dataset",
    )


def test_a_hub_dataset_pins_into_datasets_and_resolves_through_the_hub_dropins(
    tmp_path: Path, hub: SessionHub, dataset_commit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safeload.hub

    policy_path = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
    )
    name, entry = pin_model(f"hf://datasets/acme/reviews@{dataset_commit}", policy_path=policy_path)
    assert name == "acme/reviews" and entry.kind == "dataset"
    assert dict(entry.files) == {
        "data/train.csv": _sha(TRAIN),
        "data/train-00000.safetensors": _sha(SHARD),
        "README.md": _sha(b"# reviews\n"),
    }
    policy = load_policy(policy_path)
    assert "acme/reviews" in policy.datasets and "acme/reviews" not in policy.models
    assert '[datasets."acme/reviews"]' in policy_path.read_text()

    monkeypatch.setenv("SAFELOAD_POLICY", str(policy_path))
    folder = Path(safeload.hub.snapshot_download("acme/reviews", repo_type="dataset"))
    assert (folder / "data" / "train.csv").read_bytes() == TRAIN
    assert folder.is_relative_to(tmp_path / "store")
    shard = safeload.hub.hf_hub_download("acme/reviews", "data/train-00000.safetensors", repo_type="dataset")
    assert Path(shard).read_bytes() == SHARD
    with pytest.raises(UntrustedSourceError, match=r"not in the policy's \[models\]"):
        safeload.hub.snapshot_download("acme/reviews")  # a dataset is not a model
    with pytest.raises(
        UntrustedSourceError, match=r"dataset 'acme/other' is not in the policy's \[datasets\]"
    ):
        safeload.hub.snapshot_download("acme/other", repo_type="dataset")


def test_a_tampered_hub_dataset_file_is_refused_and_nothing_is_stored(
    tmp_path: Path, hub: SessionHub, dataset_commit: str
) -> None:
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
        datasets={
            "reviews": {
                "registry": "hub",
                "repo": "acme/reviews",
                "revision": dataset_commit,
                "files": {"data/train.csv": _sha(TRAIN.replace(b"1", b"0"))},
            }
        },
    )
    with pytest.raises(IntegrityError, match="expected sha256:"):
        fetch_dataset("reviews", policy=load_policy(policy), progress=False)
    for part in ("blobs", "models"):
        assert [p for p in (tmp_path / "store" / part).rglob("*") if p.is_file()] == []


def test_a_directory_dataset_is_verified_and_covered_by_prefetch_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safeload.cli import main

    source = tmp_path / "registry" / "datasets" / "acme" / "reviews"  # datasets/ as on the Hub
    source.mkdir(parents=True)
    (source / "train.csv").write_bytes(TRAIN)
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": str(tmp_path / "registry")}},
        datasets={
            "reviews": {"registry": "local", "repo": "acme/reviews", "files": {"train.csv": _sha(TRAIN)}}
        },
    )
    assert main(["prefetch", "--all", "--policy", str(policy), "--json"]) == 0
    ready = json.loads(capsys.readouterr().out)["models"]
    assert [(r["name"], r["kind"]) for r in ready] == [("reviews", "dataset")]
    stored = Path(ready[0]["folder"]) / "train.csv"
    assert stored.read_bytes() == TRAIN
    assert main(["verify", "--policy", str(policy), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["kind"], m["status"]) for m in report["models"]] == [("reviews", "dataset", "ok")]

    (source / "train.csv").write_bytes(TRAIN + b"poisoned,1\n")  # the source changes after the pin
    with pytest.raises(IntegrityError):
        fetch_dataset(
            "reviews",
            policy=load_policy(
                write_policy(
                    tmp_path / "fresh.toml",
                    store=tmp_path / "fresh-store",
                    registries={"local": {"kind": "directory", "path": str(tmp_path / "registry")}},
                    datasets={
                        "reviews": {
                            "registry": "local",
                            "repo": "acme/reviews",
                            "files": {"train.csv": _sha(TRAIN)},
                        }
                    },
                )
            ),
            progress=False,
        )
    assert stored.read_bytes() == TRAIN  # the verified copy is untouched


def test_a_model_names_its_datasets_and_base_model_by_entry() -> None:
    head = "version = 1\n[registries.hub]\nkind = 'huggingface'\nendpoint = 'http://127.0.0.1:1'\n"
    model = (
        "[models.m]\nregistry = 'hub'\nrepo = 'a/m'\nrevision = '" + "a" * 40 + "'\n"
        "files = { w = 'sha256:" + "0" * 64 + "' }\n"
    )
    with pytest.raises(
        PolicyError, match=r"models\.m\.datasets: names 'imdb', which is no \[datasets\] entry"
    ):
        parse_policy(head + model + "datasets = ['imdb']\n")
    with pytest.raises(
        PolicyError, match=r"models\.m\.base_model: names 'base', which is no other \[models\]"
    ):
        parse_policy(head + model + "base_model = 'base'\n")
    with pytest.raises(PolicyError, match=r"datasets\.imdb.*task"):
        parse_policy(
            head
            + "[datasets.imdb]\nregistry = 'hub'\nrepo = 'x/imdb'\nrevision = '"
            + "b" * 40
            + "'\ntask = 'x'\nfiles = { a = 'sha256:"
            + "1" * 64
            + "' }\n"
        )
    ok = parse_policy(
        head + model + "datasets = ['imdb']\n[datasets.imdb]\nregistry = 'hub'\nrepo = 'x/imdb'\n"
        "revision = '" + "b" * 40 + "'\nfiles = { a = 'sha256:" + "1" * 64 + "' }\n"
    )
    assert ok.models["m"].datasets == ("imdb",) and ok.datasets["imdb"].store_repo == "datasets/x/imdb"


def test_the_bom_holds_the_datasets_hashes_and_the_base_model(tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from safeload.cli import main

    root = tmp_path / "registry"
    for repo, name, data in (
        ("acme/base", "config.json", b'{"model_type": "bert"}'),
        ("acme/tuned", "config.json", b'{"model_type": "bert", "tuned": 1}'),
        ("datasets/acme/reviews", "train.csv", TRAIN),
    ):
        (root / repo).mkdir(parents=True)
        (root / repo / name).write_bytes(data)
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": str(root)}},
        models={
            "acme/base": {
                "registry": "local",
                "repo": "acme/base",
                "files": {"config.json": _sha(b'{"model_type": "bert"}')},
            },
            "acme/tuned": {
                "registry": "local",
                "repo": "acme/tuned",
                "datasets": ["reviews"],
                "base_model": "acme/base",
                "files": {"config.json": _sha(b'{"model_type": "bert", "tuned": 1}')},
            },
        },
        datasets={
            "reviews": {"registry": "local", "repo": "acme/reviews", "files": {"train.csv": _sha(TRAIN)}}
        },
    )
    assert main(["prefetch", "reviews", "--policy", str(policy)]) == 0
    out = tmp_path / "bom.json"
    assert main(["bom", "acme/tuned", "-o", str(out), "--policy", str(policy)]) == 0
    text = out.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    (data,) = [c for c in doc["components"] if c["type"] == "data"]
    assert data["name"] == "acme/reviews"
    assert data["components"][0]["hashes"][0]["content"] == _sha(TRAIN).removeprefix("sha256:")
    assert {p["name"]: p["value"] for p in data["properties"]}["safeload:verification"] == "sha256"
    models = {c["name"]: c for c in doc["components"] if c["type"] == "machine-learning-model"}
    assert set(models) == {"acme/tuned", "acme/base"}  # the base model is described with its fine-tune
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert {data["bom-ref"], models["acme/base"]["bom-ref"]} <= deps[models["acme/tuned"]["bom-ref"]]
    assert models["acme/tuned"]["modelCard"]["modelParameters"]["datasets"] == [{"ref": data["bom-ref"]}]
