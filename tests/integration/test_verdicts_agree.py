"""The loader and ``safeload verify`` reach one verdict for one store state.

Both call the verification core (:mod:`safeload._trust.verification`); this matrix holds them to it. Each
scenario builds a signed, attested model in a directory registry, sets up the store and the policy, then
asks the loader (``fetch_model``: succeeds, or raises which error type) and ``safeload verify NAME
--json`` (the model's status, and the error type it names) about the same state:

- good states: full pins, partial pins of a signed model (the case verify used to call tampered), a
  signature alone, evaluations with either;
- the store tampered after a good load (a changed blob, a missing file, an extra file): the loader's
  warm path and verify both raise IntegrityError;
- the policy changed over the stored bytes (a wrong signer, a failing metric, an evaluation on a dataset
  the entry does not accept): the loader re-verifies the registry's bytes, which are the stored ones, and
  verify checks the stored ones; both name the same error;
- the source tampered (a changed blob re-pinned, a signed file gone, an extra unsigned file, an
  attestation from another key or over fewer files): the loader refuses, nothing is published, and
  verify finds nothing to call intact.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from safeload._trust.resolve import fetch_model
from safeload.cli import main
from safeload.errors import SafeloadError
from safeload.policy import load_policy
from tests.helpers.signing import generate_key, sign_with_key
from tests.helpers.trust import folder_pins, write_policy

NAME = "acme/m"
WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(64))


@dataclass
class World:
    root: Path
    model: Path
    keys: dict[str, Path]
    dataset_pins: dict[str, str]
    store: Path = field(init=False)

    def __post_init__(self) -> None:
        self.store = self.root / "store"

    def policy(self, **entry: Any) -> Path:
        key = entry.pop("_key", "pub")
        base: dict[str, Any] = {"registry": "local", "repo": "acme/m", "revision": "1" * 40}
        base.update(entry)
        return write_policy(
            self.root / "trust.toml",
            store=self.store,
            registries={"local": {"kind": "directory", "path": str(self.root / "registry")}},
            signers={
                "publisher": {"kind": "key", "public_key": str(self.keys[key])},
                "eval": {"kind": "key", "public_key": str(self.keys["eval_pub"])},
            },
            models={NAME: base},
            datasets={
                "reviews": {"registry": "local", "repo": "acme/reviews", "files": self.dataset_pins},
                "other": {"registry": "local", "repo": "acme/other", "files": self.dataset_pins},
            },
        )

    def served(self, *names: str) -> dict[str, str]:
        pins = folder_pins(self.model)
        pins.pop("model.sig", None)
        pins.pop("evaluation.intoto.jsonl", None)
        return {k: v for k, v in pins.items() if not names or k in names}

    def attest(self, key: str = "eval_key") -> None:
        self.policy(files=self.served())  # names the pinned dataset, so the attestation records its pins
        argv = ["attest", str(self.model), "--metrics", str(self.root / "metrics.json")]
        argv += ["--key", str(self.keys[key]), "--dataset", "reviews"]
        assert main([*argv, "--policy", str(self.root / "trust.toml")]) == 0


@pytest.fixture
def world(tmp_path: Path) -> World:
    registry = tmp_path / "registry"
    model = registry / "acme" / "m"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "tiny"}')
    (model / "model.safetensors").write_bytes(WEIGHTS)
    (model / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    data = registry / "datasets" / "acme" / "reviews"
    data.mkdir(parents=True)
    (data / "test.csv").write_text("text,label\ngood,1\n")
    other = registry / "datasets" / "acme" / "other"
    other.mkdir(parents=True)
    (other / "test.csv").write_text("text,label\ngood,1\n")
    keys: dict[str, Path] = {}
    for stem in ("pub", "wrong", "eval", "rogue"):
        pair = generate_key(tmp_path / "keys", stem)
        keys[stem] = pair.public
        keys[f"{stem}_key"] = pair.private
    keys["eval_pub"] = keys["eval"]
    sign_with_key(model, keys["pub_key"])
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.93}))
    w = World(root=tmp_path, model=model, keys=keys, dataset_pins=folder_pins(data))
    w.attest()
    return w


EVAL = {"signer": "eval", "metrics": {"accuracy": ">= 0.9"}}


def _loader(world: World, policy: Path) -> str:
    try:
        fetch_model(NAME, policy=load_policy(policy), progress=False)
    except SafeloadError as exc:
        return type(exc).__name__
    return "ok"


def _verify(world: World, policy: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str | None]:
    capsys.readouterr()
    code = main(["verify", NAME, "--policy", str(policy), "--json"])
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert (code == 0) == (model["status"] == "ok")
    return model["status"], model.get("error")


def _blob(world: World, rel: str) -> Path:
    digest = world.served()[rel].removeprefix("sha256:")
    return world.store / "blobs" / "sha256" / digest


def _change_blob(world: World) -> None:
    blob = _blob(world, "model.safetensors")
    blob.chmod(0o644)
    blob.write_bytes(WEIGHTS[:-1] + b"\xff")


def _store_folder(world: World) -> Path:
    return world.store / "models" / "local" / "acme" / "m" / ("1" * 40)


def _remove_file(world: World) -> None:
    folder = _store_folder(world)
    folder.chmod(0o755)
    (folder / "tokenizer.json").unlink()


def _add_file(world: World) -> None:
    folder = _store_folder(world)
    folder.chmod(0o755)
    (folder / "modeling_evil.py").write_text("import os\n")


@dataclass(frozen=True)
class Scenario:
    # The policy entry (``files`` as a callable of the world: its pins are taken after ``source`` ran).
    entry: Callable[[World], dict[str, Any]]
    expect: str  # "ok", or the error type both must name
    # Source tampering, before anything is fetched.
    source: Callable[[World], None] | None = None
    # Fetch once under this entry first (a good state), then switch to ``entry`` / tamper the store.
    populate: Callable[[World], dict[str, Any]] | None = None
    store: Callable[[World], None] | None = None


def _full(w: World) -> dict[str, Any]:
    return {"files": w.served()}


def _full_signed(w: World) -> dict[str, Any]:
    return {"files": w.served(), "signer": "publisher"}


def _partial_signed(w: World) -> dict[str, Any]:
    return {"files": w.served("config.json", "model.safetensors"), "signer": "publisher"}


def _replace_weights(w: World) -> None:
    (w.model / "model.safetensors").write_bytes(WEIGHTS[:-1] + b"\xee")


def _lose_signed_file(w: World) -> None:
    (w.model / "tokenizer.json").unlink()


def _add_unsigned(w: World) -> None:
    (w.model / "modeling_evil.py").write_text("import os\n")


def _rogue_attestation(w: World) -> None:
    (w.model / "evaluation.intoto.jsonl").unlink()
    w.attest(key="rogue_key")


def _file_after_evaluation(w: World) -> None:
    (w.model / "generation_config.json").write_text('{"max_length": 20}')


SCENARIOS: dict[str, Scenario] = {
    "full pins": Scenario(_full, "ok"),
    "full pins, signed": Scenario(_full_signed, "ok"),
    "signature only": Scenario(lambda w: {"signer": "publisher"}, "ok"),
    "partial pins, signed": Scenario(_partial_signed, "ok"),
    "full pins, evaluated": Scenario(
        lambda w: {**_full(w), "datasets": ["reviews"], "require_evaluation": EVAL}, "ok"
    ),
    "partial pins, signed, evaluated": Scenario(
        lambda w: {**_partial_signed(w), "datasets": ["reviews"], "require_evaluation": EVAL}, "ok"
    ),
    "store: a changed blob": Scenario(
        _full_signed, "IntegrityError", populate=_full_signed, store=_change_blob
    ),
    "store: a missing file": Scenario(
        _full_signed, "IntegrityError", populate=_full_signed, store=_remove_file
    ),
    "store: an extra file": Scenario(
        _partial_signed, "IntegrityError", populate=_partial_signed, store=_add_file
    ),
    "policy: a wrong signer": Scenario(
        lambda w: {**_full_signed(w), "_key": "wrong"}, "SignatureError", populate=_full_signed
    ),
    "policy: a failing metric": Scenario(
        lambda w: {**_full(w), "require_evaluation": {"signer": "eval", "metrics": {"accuracy": ">= 0.95"}}},
        "EvaluationError",
        populate=lambda w: {**_full(w), "require_evaluation": EVAL},
    ),
    "policy: evaluated on a dataset the entry does not accept": Scenario(
        lambda w: {
            **_full(w),
            "datasets": ["reviews", "other"],
            "require_evaluation": {**EVAL, "dataset": "other"},
        },
        "EvaluationError",
        populate=lambda w: {**_full(w), "datasets": ["reviews"], "require_evaluation": EVAL},
    ),
    "source: a changed blob, re-pinned": Scenario(_full_signed, "SignatureError", source=_replace_weights),
    "source: a signed file gone": Scenario(
        lambda w: {"signer": "publisher"}, "UntrustedSourceError", source=_lose_signed_file
    ),
    "source: an extra unsigned file, pinned": Scenario(_full_signed, "SignatureError", source=_add_unsigned),
    "source: an attestation from another key": Scenario(
        lambda w: {**_full(w), "require_evaluation": EVAL}, "SignatureError", source=_rogue_attestation
    ),
    "source: a file added after the evaluation": Scenario(
        lambda w: {**_full(w), "require_evaluation": EVAL}, "IntegrityError", source=_file_after_evaluation
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_loader_and_verify_agree(name: str, world: World, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = SCENARIOS[name]
    if scenario.source is not None:
        scenario.source(world)
    if scenario.populate is not None:
        assert _loader(world, world.policy(**scenario.populate(world))) == "ok"
    if scenario.store is not None:
        scenario.store(world)
    policy = world.policy(**scenario.entry(world))

    loader = _loader(world, policy)
    status, error = _verify(world, policy, capsys)

    assert loader == scenario.expect
    if loader == "ok":
        assert (status, error) == ("ok", None)
        assert _loader(world, policy) == "ok"  # warm, from what verify just checked
    elif scenario.populate is None and scenario.store is None:
        assert status == "absent"  # the refusal published nothing
    else:
        assert (status, error) == ("tampered", loader)


def test_the_matrix_covers_every_kind_of_tampering() -> None:
    kinds = " ".join(SCENARIOS)
    for kind in ("changed blob", "missing file", "extra file", "extra unsigned", "wrong signer"):
        assert kind in kinds
    assert "attestation" in kinds and "partial pins" in kinds


def test_a_partially_pinned_signed_model_that_loads_is_intact_to_verify(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproduction of issue 19's finding 4: before the verification core, verify called this model
    tampered ("these signed files are not among the model's files") and exited 1."""
    policy = world.policy(**_partial_signed(world))
    fetched = fetch_model(NAME, policy=load_policy(policy), progress=False)
    assert sorted(fetched.files) == ["config.json", "model.safetensors"]
    capsys.readouterr()
    assert main(["verify", NAME, "--policy", str(policy), "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert (model["status"], model["signature"], model["problems"]) == ("ok", "verified", [])
    assert main(["verify", "--policy", str(policy), "--json"]) == 0  # the whole store too
    shutil.rmtree(world.store)
