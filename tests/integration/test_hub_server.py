"""The olah fixture serves what it was given, through the real huggingface_hub client."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.helpers.hubserver import minilm_files
from tests.integration.conftest import MINILM, SessionHub


def test_real_client_reads_lfs_and_plain_files(hub: SessionHub, hf_cache: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=hub.endpoint)
    infos = {
        i.path: i
        for i in api.get_paths_info(MINILM, ["model.safetensors", "config.json"], revision=hub.minilm_sha)
    }
    real = minilm_files()
    want = hashlib.sha256(real["model.safetensors"].read_bytes()).hexdigest()
    assert infos["model.safetensors"].lfs.sha256 == want
    assert infos["config.json"].lfs is None
    got = hf_hub_download(
        MINILM, "config.json", revision=hub.minilm_sha, endpoint=hub.endpoint, cache_dir=hf_cache
    )
    assert Path(got).read_bytes() == real["config.json"].read_bytes()


def test_replace_blob_changes_served_bytes(hub: SessionHub, hf_cache: Path) -> None:
    from huggingface_hub import hf_hub_download

    sha = hub.add_repo("tamper/one", {"w.safetensors": b"A" * 1000, "config.json": b"{}"})
    hub.replace_blob("tamper/one", "w.safetensors", b"B" * 1000)
    got = hf_hub_download(
        "tamper/one", "w.safetensors", revision=sha, endpoint=hub.endpoint, cache_dir=hf_cache
    )
    assert Path(got).read_bytes() == b"B" * 1000
