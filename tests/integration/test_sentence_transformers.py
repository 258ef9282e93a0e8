"""``safeload.sentence_transformers.SentenceTransformer`` against plain sentence-transformers on the same
files: the real all-MiniLM-L6-v2 from the Hub-compatible test server, and a tiny model built from the
library's own modules (Transformer, Pooling, Dense) from a directory registry, including one whose
Dense layer ships as a poisoned ``pytorch_model.bin``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import sentence_transformers as st
import torch

from tests.helpers.canary import Payload
from tests.helpers.hubserver import minilm_files, tiny_bert_files
from tests.helpers.trust import folder_pins, write_policy
from tests.integration.conftest import MINILM, SessionHub

SENTENCES = ["A man is eating food.", "The weights were verified before they were loaded."]


def test_the_real_minilm_from_the_hub_embeds_as_plain_sentence_transformers(
    tmp_path: Path, hub: SessionHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeload.sentence_transformers import SentenceTransformer

    files = minilm_files()
    pins = {rel: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in files.items()}
    policy = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
        models={MINILM: {"registry": "hub", "repo": MINILM, "revision": hub.minilm_sha, "files": pins}},
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))
    ours = SentenceTransformer("all-MiniLM-L6-v2")  # the bare name, as sentence-transformers allows
    plain = st.SentenceTransformer(str(files["config.json"].parent), local_files_only=True)
    assert np.array_equal(ours.encode(SENTENCES), plain.encode(SENTENCES))
    assert isinstance(ours, st.SentenceTransformer)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers model (BERT + mean pooling + Dense 32->8) saved by the library."""
    from sentence_transformers import models

    root = tmp_path_factory.mktemp("st")
    bert = root / "bert"
    bert.mkdir()
    for name, data in tiny_bert_files().items():
        (bert / name).write_bytes(data)
    word = models.Transformer(str(bert))
    torch.manual_seed(0)
    dense = models.Dense(in_features=word.get_embedding_dimension(), out_features=8)
    model = st.SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension()), dense])
    model.save(str(root / "registry" / "acme" / "tiny-st"))
    return root / "registry"


def _dir_policy(tmp_path: Path, registry: Path, repo: str) -> Path:
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": str(registry)}},
        models={repo: {"registry": "local", "repo": repo, "files": folder_pins(registry / repo)}},
    )


def test_a_tiny_model_from_a_directory_registry_embeds_as_plain(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeload.sentence_transformers import SentenceTransformer

    monkeypatch.setenv("SAFELOAD_POLICY", str(_dir_policy(tmp_path, tiny, "acme/tiny-st")))
    ours = SentenceTransformer("acme/tiny-st")
    plain = st.SentenceTransformer(str(tiny / "acme" / "tiny-st"), local_files_only=True)
    assert np.array_equal(ours.encode(SENTENCES), plain.encode(SENTENCES))


def test_a_poisoned_dense_bin_loads_its_weights_and_runs_nothing(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from safetensors.torch import load_file

    from safeload.sentence_transformers import SentenceTransformer

    canary = tmp_path / "canary"
    registry = tmp_path / "registry"
    shutil.copytree(tiny, registry)
    dense = registry / "acme" / "tiny-st" / "2_Dense"
    state: dict[str, object] = dict(load_file(dense / "model.safetensors"))
    state["evil"] = Payload(canary)  # runs if anything unpickles this file in the host
    buf = io.BytesIO()
    torch.save(state, buf)
    (dense / "pytorch_model.bin").write_bytes(buf.getvalue())
    (dense / "model.safetensors").unlink()
    monkeypatch.setenv("SAFELOAD_POLICY", str(_dir_policy(tmp_path, registry, "acme/tiny-st")))
    ours = SentenceTransformer("acme/tiny-st")
    plain = st.SentenceTransformer(str(tiny / "acme" / "tiny-st"), local_files_only=True)
    assert np.array_equal(ours.encode(SENTENCES), plain.encode(SENTENCES))
    assert not canary.exists(), "the pickle ran in the host"


def test_an_unpinned_name_is_refused_with_the_pin_hint(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safeload.errors import UntrustedSourceError
    from safeload.sentence_transformers import SentenceTransformer

    monkeypatch.setenv("SAFELOAD_POLICY", str(_dir_policy(tmp_path, tiny, "acme/tiny-st")))
    with pytest.raises(UntrustedSourceError, match="safeload pin"):
        SentenceTransformer("org/unpinned")
