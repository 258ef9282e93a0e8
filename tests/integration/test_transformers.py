"""safeload.transformers against the real Hub server (olah), real transformers and the real jail.

Tiny random models are served in three layouts (safetensors, a single ``pytorch_model.bin``, sharded
``.bin`` with an index); loading them through the drop-in must give the logits plain transformers gives
on the same files (for ``.bin`` computed in a throwaway process: this one never unpickles). Hostile repos
(a payload in the weights, a redirecting config, ``auto_map`` code, pickled tokenizer and training files)
must load neutralised or be refused, and never leave a trace on the host.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import safeload
from safeload._integrations.guard import refuse_host_unpickling
from safeload.errors import IntegrityError, UnsafeContentError, UntrustedSourceError
from safeload.transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    pipeline,
)
from tests.helpers import models as M
from tests.helpers.hubserver import copy_tree_files, minilm_files

pytestmark = pytest.mark.slow

GPT2 = ("gpt2", M.tiny_gpt2, "GPT2LMHeadModel", AutoModelForCausalLM)
BERT = ("bert", M.tiny_bert, "BertForMaskedLM", AutoModelForMaskedLM)
LAYOUTS = ("safetensors", "bin", "sharded_bin")


class _Payload:
    """Appends to a canary file if a real unpickler ever runs it."""

    def __init__(self, canary: Path, tag: str = "ran") -> None:
        self.canary = canary
        self.tag = tag

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (builtins.exec, (f"open({str(self.canary)!r}, 'a').write({self.tag!r})",))


_TINY_CODE = """
from transformers import BertConfig, BertModel


class TinyCodeConfig(BertConfig):
    model_type = "tiny-code"


class TinyCodeModel(BertModel):
    config_class = TinyCodeConfig
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _pickled(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _pins(files: Mapping[str, bytes]) -> str:
    pins = [f'{json.dumps(rel)} = "sha256:{hashlib.sha256(data).hexdigest()}"' for rel, data in files.items()]
    return "{ " + ", ".join(sorted(pins)) + " }"


@dataclass
class World:
    """Served repos, their local copies, the policy naming them, and reference logits."""

    root: Path
    policy: Path
    local: dict[str, Path]
    refs: dict[str, torch.Tensor]
    canary: Path
    minilm_dir: Path


@pytest.fixture(scope="module")
def world(hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("safeload-transformers")
    canary = root / "canary"
    repos: dict[str, dict[str, bytes]] = {}
    local: dict[str, Path] = {}
    for kind, build, _cls, _auto in (GPT2, BERT):
        model = build()
        for layout in LAYOUTS:
            name = f"tiny/{kind}-{layout}"
            folder = M.save_model(model, root / "src" / name, layout)
            local[name] = folder
            repos[name] = _files(folder)
    M.write_tokenizer(root / "tok")
    tokenizer_files = _files(root / "tok")

    bert = M.tiny_bert()
    state = dict(bert.state_dict())
    state["evil"] = _Payload(canary)
    payload_repo = dict(repos["tiny/bert-safetensors"])
    del payload_repo["model.safetensors"]
    payload_repo["pytorch_model.bin"] = _pickled(state)
    repos["evil/payload-bin"] = payload_repo

    redirect = dict(repos["tiny/bert-safetensors"])
    config = json.loads(redirect["config.json"])
    config["transformers_weights"] = "evil.bin"
    redirect["config.json"] = json.dumps(config).encode()
    redirect["evil.bin"] = _pickled({"x": _Payload(canary)})
    repos["evil/redirect"] = redirect

    code = dict(repos["tiny/bert-safetensors"])
    config = json.loads(code["config.json"])
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    code["config.json"] = json.dumps(config).encode()
    code["modeling_evil.py"] = f"open({str(canary)!r}, 'a').write('code ran')\n".encode()
    repos["evil/auto-map"] = code

    other = dict(repos["tiny/bert-safetensors"])
    config = json.loads(other["config.json"])
    config["auto_map"] = {"AutoModel": "someone/else--modeling.Model"}
    other["config.json"] = json.dumps(config).encode()
    repos["evil/auto-map-other-repo"] = other

    allowed = {k: v for k, v in repos["tiny/bert-safetensors"].items() if k != "config.json"}
    config = json.loads(repos["tiny/bert-safetensors"]["config.json"])
    config.update(
        model_type="tiny-code",
        architectures=["TinyCodeModel"],
        auto_map={"AutoConfig": "modeling_tiny.TinyCodeConfig", "AutoModel": "modeling_tiny.TinyCodeModel"},
    )
    allowed["config.json"] = json.dumps(config).encode()
    allowed["modeling_tiny.py"] = _TINY_CODE.encode()
    repos["code/allowed"] = allowed

    pickles = {**repos["tiny/bert-safetensors"], **tokenizer_files}
    pickles["training_args.bin"] = _pickled(_Payload(canary, "training_args"))
    pickles["optimizer.pt"] = _pickled({"state": _Payload(canary, "optimizer")})
    pickles["tokenizer.pkl"] = _pickled(_Payload(canary, "tokenizer"))
    tok_config = json.loads(pickles["tokenizer_config.json"])
    tok_config["vocab_file"] = "tokenizer.pkl"
    pickles["tokenizer_config.json"] = json.dumps(tok_config).encode()
    pickles["preprocessor_config.pkl"] = _pickled(_Payload(canary, "processor"))
    repos["evil/pickled-extras"] = pickles

    entries = []
    for name, files in repos.items():
        sha = hub.add_repo(name, files)
        entries.append(
            f'[models."{name}"]\nregistry = "hub"\nrepo = "{name}"\nrevision = "{sha}"\n'
            f"files = {_pins(files)}\n" + ("allow_code = true\n" if name == "code/allowed" else "")
        )
    minilm_dir = root / "registry"
    real = minilm_files()
    copy_tree_files(real, minilm_dir / "sentence-transformers" / "all-MiniLM-L6-v2")
    minilm_pins = {rel: p.read_bytes() for rel, p in real.items()}
    entries.append(
        '[models."minilm"]\nregistry = "local"\nrepo = "sentence-transformers/all-MiniLM-L6-v2"\n'
        f"files = {_pins(minilm_pins)}\n"
    )
    policy = root / "trust.toml"
    policy.write_text(
        "version = 1\n"
        f"store = {json.dumps(str(root / 'store'))}\n"
        f"[registries.hub]\nkind = \"huggingface\"\nendpoint = \"{hub.endpoint}\"\n"
        f"[registries.local]\nkind = \"directory\"\npath = {json.dumps(str(minilm_dir))}\n"
        + "\n".join(entries)
    )
    names = [(f"tiny/{kind}-{layout}", cls) for kind, _b, cls, _a in (GPT2, BERT) for layout in LAYOUTS]
    outs = M.reference_logits([(local[name], cls) for name, cls in names], M.INPUT_IDS, root)
    refs = {name: t for (name, _cls), t in zip(names, outs, strict=True)}
    yield World(root=root, policy=policy, local=local, refs=refs, canary=canary, minilm_dir=minilm_dir)


@pytest.fixture
def use_policy(world: World, monkeypatch: pytest.MonkeyPatch, hf_cache: Path) -> World:
    monkeypatch.setenv("SAFELOAD_POLICY", str(world.policy))
    return world


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", [GPT2, BERT], ids=["gpt2", "bert"])
def test_served_model_matches_plain_transformers(use_policy: World, spec: tuple, layout: str) -> None:  # type: ignore[type-arg]
    kind, _build, cls_name, auto = spec
    name = f"tiny/{kind}-{layout}"
    model = auto.from_pretrained(name)
    got = M.logits(model)
    # The same files through plain transformers: in-process for safetensors, in a subprocess for .bin.
    want = use_policy.refs[name]
    assert torch.equal(got, want)
    if layout == "safetensors":
        import transformers

        plain = getattr(transformers, cls_name).from_pretrained(use_policy.local[name])
        assert torch.equal(got, M.logits(plain))
    if kind == "gpt2":
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_conversion_happens_once(use_policy: World) -> None:
    AutoModelForCausalLM.from_pretrained("tiny/gpt2-sharded_bin")
    converted = use_policy.root / "store" / "converted" / "sha256"
    before = {p.name: p.stat().st_mtime_ns for p in converted.iterdir()}
    model = AutoModelForCausalLM.from_pretrained("tiny/gpt2-sharded_bin")
    after = {p.name: p.stat().st_mtime_ns for p in converted.iterdir()}
    assert before == after
    assert torch.equal(M.logits(model), use_policy.refs["tiny/gpt2-sharded_bin"])
    folder = Path(model.name_or_path)
    assert (folder / "model.safetensors.index.json").is_file()
    assert not any(p.name.endswith(".bin") for p in folder.iterdir())


def test_a_tampered_derived_folder_is_rebuilt(use_policy: World) -> None:
    model = AutoModelForCausalLM.from_pretrained("tiny/gpt2-bin")
    folder = Path(model.name_or_path)
    other = M.save_model(M.tiny_gpt2(seed=1), use_policy.root / "other-gpt2", "safetensors")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(other / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained("tiny/gpt2-bin")
    assert torch.equal(M.logits(model), use_policy.refs["tiny/gpt2-bin"])


def test_minilm_from_directory_registry_matches_plain_transformers(use_policy: World) -> None:
    import transformers

    sentences = ["safeload loads models safely", "a cat sat on the mat"]

    def embed(tok: object, model: object) -> torch.Tensor:
        batch = tok(sentences, padding=True, truncation=True, return_tensors="pt")  # type: ignore[operator]
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state  # type: ignore[operator]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)

    got = embed(AutoTokenizer.from_pretrained("minilm"), AutoModel.from_pretrained("minilm"))
    folder = use_policy.minilm_dir / "sentence-transformers" / "all-MiniLM-L6-v2"
    plain_tok = transformers.AutoTokenizer.from_pretrained(folder)
    want = embed(plain_tok, transformers.AutoModel.from_pretrained(folder))
    assert got.shape == (2, 384)
    assert torch.equal(got, want)


def test_payload_in_served_weights_never_runs(use_policy: World) -> None:
    model = AutoModelForMaskedLM.from_pretrained("evil/payload-bin")
    assert torch.equal(M.logits(model), M.logits(M.tiny_bert()))
    assert not use_policy.canary.exists()


def test_redirecting_config_is_refused(use_policy: World) -> None:
    with pytest.raises(UnsafeContentError, match="transformers_weights"):
        AutoModelForMaskedLM.from_pretrained("evil/redirect")
    assert not use_policy.canary.exists()


def test_auto_map_code_never_runs(use_policy: World) -> None:
    with pytest.raises(UntrustedSourceError, match="allow_code"):
        AutoModel.from_pretrained("evil/auto-map", trust_remote_code=True)
    # Without remote code, transformers uses its own BERT classes; the repository's code is never imported.
    model = AutoModel.from_pretrained("evil/auto-map")
    assert type(model).__module__.startswith("transformers.")
    config = AutoConfig.from_pretrained("evil/auto-map")
    assert config.model_type == "bert"
    assert type(AutoModel.from_config(config)).__name__ == "BertModel"  # from_config passes through
    assert not use_policy.canary.exists()


def test_code_runs_only_where_the_policy_allows_it(use_policy: World) -> None:
    model = AutoModel.from_pretrained("code/allowed", trust_remote_code=True)
    assert type(model).__name__ == "TinyCodeModel"
    assert torch.equal(M.logits(model), M.logits(M.tiny_bert().bert))
    with pytest.raises(UntrustedSourceError, match="local folder"):
        AutoModel.from_pretrained(str(use_policy.local["tiny/bert-safetensors"]), trust_remote_code=True)


def test_auto_map_into_another_repo_is_refused(use_policy: World) -> None:
    with pytest.raises(UntrustedSourceError, match="another repository"):
        AutoModel.from_pretrained("evil/auto-map-other-repo")


def test_pickled_tokenizer_and_training_files_are_neutralised(use_policy: World) -> None:
    model = AutoModelForMaskedLM.from_pretrained("evil/pickled-extras")
    folder = Path(model.name_or_path)
    present = {p.name for p in folder.iterdir()}
    pickles = {"training_args.bin", "optimizer.pt", "tokenizer.pkl", "preprocessor_config.pkl"}
    assert pickles.isdisjoint(present)
    tok = AutoTokenizer.from_pretrained("evil/pickled-extras")
    assert tok("the cat sat")["input_ids"]
    assert not use_policy.canary.exists()


def test_unknown_name_and_other_revision_are_refused(use_policy: World) -> None:
    with pytest.raises(UntrustedSourceError, match="safeload pin"):
        AutoModel.from_pretrained("tiny/not-pinned")
    with pytest.raises(UntrustedSourceError, match="revision"):
        AutoModel.from_pretrained("tiny/bert-safetensors", revision="main")
    with pytest.raises(UnsafeContentError, match="use_safetensors"):
        AutoModel.from_pretrained("tiny/bert-bin", use_safetensors=False)
    with pytest.raises(UntrustedSourceError, match="subfolder"):
        AutoConfig.from_pretrained("tiny/bert-bin", subfolder="../../..")


def test_pipeline_resolves_through_the_policy(use_policy: World) -> None:
    tok = str(use_policy.root / "tok")
    extract = pipeline("feature-extraction", model="tiny/bert-bin", tokenizer=tok)
    out = extract("the cat sat")
    assert len(out[0]) == len(AutoTokenizer.from_pretrained(tok)("the cat sat")["input_ids"])
    with pytest.raises(UntrustedSourceError):
        pipeline("feature-extraction", model="tiny/not-pinned")
    with pytest.raises(UntrustedSourceError, match="default model"):
        pipeline("sentiment-analysis")


def test_local_folder_pickles_go_through_the_jail(use_policy: World) -> None:
    name = "tiny/bert-bin"
    model = AutoModelForMaskedLM.from_pretrained(str(use_policy.local[name]))
    assert torch.equal(M.logits(model), use_policy.refs[name])


def test_a_pinned_local_bin_converts_from_its_verified_copy(
    use_policy: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    folder = shutil.copytree(use_policy.local["tiny/bert-bin"], tmp_path / "pinned")
    weights = folder / "pytorch_model.bin"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    policy = tmp_path / "trust.toml"
    policy.write_text(
        f"version = 1\nstore = {json.dumps(str(tmp_path / 'store'))}\n"
        f'[files]\n{json.dumps(str(weights))} = "sha256:{digest}"\n'
    )
    monkeypatch.setenv("SAFELOAD_POLICY", str(policy))
    model = AutoModelForMaskedLM.from_pretrained(str(folder))
    assert torch.equal(M.logits(model), use_policy.refs["tiny/bert-bin"])
    assert (tmp_path / "store" / "converted" / "sha256" / f"{digest}.safetensors").is_file()
    # Other bytes at the pinned path (same size): refused, never answered from the cached conversion.
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="pin"):
        AutoModelForMaskedLM.from_pretrained(str(folder))


def test_an_index_naming_unpinned_shards_is_refused(use_policy: World, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "partial"
    shutil.copytree(use_policy.local["tiny/bert-sharded_bin"], folder)
    (folder / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(UntrustedSourceError, match=r"pytorch_model-00002-of-00003\.bin"):
        AutoModelForMaskedLM.from_pretrained(str(folder))


def test_guard_refuses_host_unpickling_inside_transformers(world: World, tmp_path: Path) -> None:
    import pickle

    import transformers
    import transformers.modeling_utils as mu

    canary = tmp_path / "canary"
    folder = tmp_path / "bin-only"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(_pickled({"w": _Payload(canary)}))
    (folder / "config.json").write_bytes(world.local["tiny/bert-bin"].joinpath("config.json").read_bytes())
    before = (torch.load, pickle.loads, mu.load_state_dict)
    with refuse_host_unpickling():
        with pytest.raises(UnsafeContentError, match="never unpickles"):
            mu.load_state_dict(str(folder / "pytorch_model.bin"))
        with pytest.raises(UnsafeContentError):
            torch.load(folder / "pytorch_model.bin")
        with pytest.raises(UnsafeContentError):
            pickle.loads(b"\x80\x04K\x01.")
        # transformers' own .bin path, deep inside from_pretrained, hits the guard too.
        with pytest.raises(UnsafeContentError):
            transformers.BertForMaskedLM.from_pretrained(str(folder), use_safetensors=False)
    assert (torch.load, pickle.loads, mu.load_state_dict) == before
    assert all(a is b for a, b in zip((torch.load, pickle.loads, mu.load_state_dict), before, strict=True))
    assert not canary.exists()


def test_patch_routes_transformers_names_through_the_policy(use_policy: World) -> None:
    import transformers

    with safeload.patch():
        model = transformers.AutoModelForMaskedLM.from_pretrained("tiny/bert-sharded_bin")
        assert torch.equal(M.logits(model), use_policy.refs["tiny/bert-sharded_bin"])
        with pytest.raises(UntrustedSourceError):
            transformers.BertModel.from_pretrained("tiny/not-pinned")
