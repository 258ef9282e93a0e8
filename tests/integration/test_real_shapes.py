"""The real-file check, repeatable: files built here to the shapes of real third-party checkpoints, each
loaded with ``safeload.load`` and described with ``safeload inspect --json``, tensors bit-identical to the
real loaders' (run in a throwaway process, ``tests/helpers/reference.py``).

Shapes (what the 22-file check of issue 20 found in the wild):

- a Python 2 pickle of an sklearn-era model's arrays (BINSTRING array bytes; ``encoding="latin1"``);
- a Lightning checkpoint: ``state_dict`` nested under a key, Adam ``optimizer_states``, loops and callback
  state, and omegaconf-style ``hyper_parameters`` (``tests/helpers/omegaconf_shape.py`` pickles as
  omegaconf does: type markers ``typing.Any``/``builtins.int``, a ``defaultdict`` resolver cache);
- ``.npz`` archives of named arrays (stored and deflated);
- a TorchScript archive (``{"data": Stub, "constants": ...}``; ``safeload.state_dict`` reads it);
- a joblib dump of a fitted sklearn vectorizer and classifier beside bare arrays.

Run it alone with ``pytest tests/integration/test_real_shapes.py``.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import safeload
from tests.helpers.omegaconf_shape import DictConfig
from tests.helpers.py2pickle import py2_dumps
from tests.helpers.reference import Described, assert_same, references

ROOT = Path(__file__).resolve().parents[2]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _lightning(path: Path) -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    sd = collections.OrderedDict((f"model.{k}", v) for k, v in model.state_dict().items())
    hparams = DictConfig({"lr": 1e-3, "hidden": 8, "layers": [6, 8, 3],
                          "optim": {"name": "adam", "betas": [0.9, 0.999]}, "data_dir": "/data/x"})
    torch.save({
        "epoch": 4, "global_step": 120, "pytorch-lightning_version": "2.4.0",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "best_model_score": torch.tensor(0.25), "best_model_path": "/ckpt/epoch=3.ckpt"}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
    }, path)


def _py2(path: Path) -> None:
    g = np.random.default_rng(5)
    path.write_bytes(py2_dumps({
        "coef_": g.standard_normal((3, 10)), "intercept_": g.standard_normal(3),
        "classes_": np.array([0, 1, 2], dtype=np.int64), "vocabulary_": {"caf\xe9": 0, "the": 1},
        "label": b"r\xe9sum\xe9", "n_features": 10,
    }))


def _npz(stored: Path, deflated: Path) -> None:
    g = np.random.default_rng(6)
    arrays = {"embeddings": g.standard_normal((20, 4)).astype(np.float32),
              "ids": np.arange(20, dtype=np.int64), "mask": g.random(20) > 0.5,
              "fortran": np.asfortranarray(g.standard_normal((3, 5)))}
    np.savez(stored, **arrays)
    np.savez_compressed(deflated, **arrays)


def _sklearn_joblib(path: Path) -> dict[str, Any]:
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    docs = ["the cat sat", "the dog ran", "a cat ran", "dogs and cats", "a dog sat"]
    vec = TfidfVectorizer().fit(docs)
    clf = LogisticRegression().fit(vec.transform(docs), [0, 1, 0, 1, 1])
    joblib.dump({"vectorizer": vec, "model": clf, "coef": clf.coef_.copy(), "idf": vec.idf_}, path)
    return {"coef": clf.coef_.copy(), "idf": vec.idf_.copy(), "vocabulary": dict(vec.vocabulary_)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("shapes")
    files = {name: root / name for name in
             ("py2.pkl", "lightning.ckpt", "arrays.npz", "arrays_deflated.npz", "model.torchscript.pt",
              "sklearn.joblib")}
    _py2(files["py2.pkl"])
    _lightning(files["lightning.ckpt"])
    _npz(files["arrays.npz"], files["arrays_deflated.npz"])
    model = _model()
    torch.jit.save(torch.jit.script(model), str(files["model.torchscript.pt"]))
    sk = _sklearn_joblib(files["sklearn.joblib"])
    jobs: list[tuple[str | os.PathLike[str], str, str | None]] = [
        (files["py2.pkl"], "pickle:latin1", None), (files["lightning.ckpt"], "torch", None),
        (files["arrays.npz"], "numpy", None), (files["arrays_deflated.npz"], "numpy", None),
        (files["sklearn.joblib"], "joblib", None),
    ]
    refs = dict(zip([os.fspath(p) for p, _, _ in jobs], references(jobs), strict=True))
    return {"files": files, "refs": refs, "script_state": model.state_dict(), "sklearn": sk}


def _ref(shapes: dict[str, Any], name: str) -> Described:
    ref: Described = shapes["refs"][os.fspath(shapes["files"][name])]
    return ref


def inspect_json(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "safeload", "inspect", "--json", str(path), *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("name", ["lightning.ckpt", "arrays.npz", "arrays_deflated.npz", "sklearn.joblib"])
def test_loads_bit_identical(shapes: dict[str, Any], name: str) -> None:
    assert_same(safeload.load(shapes["files"][name]), _ref(shapes, name))


def test_py2_pickle(shapes: dict[str, Any]) -> None:
    path = shapes["files"]["py2.pkl"]
    got = safeload.load(path, encoding="latin1")
    assert_same(got, _ref(shapes, "py2.pkl"))
    assert got["vocabulary_"] == {"café": 0, "the": 1}
    code, doc = inspect_json(path, "--encoding", "latin1")
    assert code == 0 and doc["verdict"] == "data-only"
    assert {t["name"]: t["kind"] for t in doc["tensors"]}["coef_"] == "ndarray"


def test_lightning_checkpoint(shapes: dict[str, Any]) -> None:
    path = shapes["files"]["lightning.ckpt"]
    ckpt = safeload.load(path)
    sd = safeload.state_dict(ckpt["state_dict"])
    assert next(iter(sd)) == "model.0.weight"
    hp = ckpt["hyper_parameters"]
    assert isinstance(hp, safeload.Stub) and hp.qualname == "tests.helpers.omegaconf_shape.DictConfig"
    assert hp.state["_content"]["lr"].state["_val"] == 1e-3
    with pytest.raises(safeload.errors.UnsafeContentError):
        safeload.load(path, weights_only=True)  # the hyper-parameters are objects, not data
    code, doc = inspect_json(path)
    severities = {f"{g['module']}.{g['name']}": g["severity"] for g in doc["globals"]}
    # The type markers the hyper-parameters carry are data, as the inert unpickler treats them.
    assert severities["builtins.int"] == "data" and severities["builtins.dict"] == "data"
    assert severities["typing.Any"] == "stub" and severities["collections.defaultdict"] == "stub"
    assert "code-bearing" not in severities.values()
    assert code == 0 and doc["verdict"] == "stubs"
    names = {t["name"] for t in doc["tensors"]}
    assert "state_dict.model.0.weight" in names
    assert any(n.startswith("optimizer_states[0].state.") and n.endswith(".exp_avg") for n in names)


def test_torchscript_archive(shapes: dict[str, Any]) -> None:
    path = shapes["files"]["model.torchscript.pt"]
    archive = safeload.load(path)
    assert set(archive) == {"data", "constants"}
    got, want = safeload.state_dict(archive), shapes["script_state"]
    assert list(got) == list(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key].view(torch.uint8),
                                                              tensor.view(torch.uint8))
    code, doc = inspect_json(path)
    assert code == 0 and doc["format"] == "torchscript" and doc["verdict"] != "code-bearing"
    human = subprocess.run([sys.executable, "-m", "safeload", "inspect", str(path)], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
    assert "safeload.state_dict() recovers an nn.Module's tensors" in human.stdout


def test_sklearn_joblib(shapes: dict[str, Any]) -> None:
    path = shapes["files"]["sklearn.joblib"]
    got = safeload.load(path)
    model, vec = got["model"], got["vectorizer"]
    assert model.qualname == "sklearn.linear_model._logistic.LogisticRegression"
    assert np.array_equal(model.state["coef_"], shapes["sklearn"]["coef"])
    assert np.array_equal(vec.state["_tfidf"].state["idf_"], shapes["sklearn"]["idf"])
    assert vec.state["vocabulary_"] == shapes["sklearn"]["vocabulary"]
    code, doc = inspect_json(path)
    assert code == 0 and doc["format"] == "joblib" and doc["verdict"] == "stubs"
    assert {t["kind"] for t in doc["tensors"]} == {"ndarray"}
    human = subprocess.run([sys.executable, "-m", "safeload", "inspect", str(path)], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
    assert human.returncode == 0
    first = human.stdout.splitlines()[0]
    assert "arrays" in first and "tensor" not in first
    assert "'vocabulary_': dict" in human.stdout  # the vectorizer's state, shown at the default depth
    assert "nn.Module" not in human.stdout  # no hint that does not apply


class _Reduce:
    """Pickles as a call of ``fn(*args)``; only ever pickled here, never unpickled."""

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def _first_line_then_close(path: Path) -> int:
    """``safeload inspect PATH | head -1``: the reader leaves after one line; the exit status of inspect."""
    proc = subprocess.Popen([sys.executable, "-m", "safeload", "inspect", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    code = proc.wait(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
    return code


def test_inspect_through_head_keeps_the_verdicts_exit_code(tmp_path: Path) -> None:
    # Far more output than a pipe holds, so the writer does meet the closed pipe.
    many = {f"layer{i}.weight": torch.zeros(2) for i in range(3000)}
    data = tmp_path / "data.pt"
    torch.save(many, data)
    evil = tmp_path / "evil.pt"
    torch.save({**many, "x": _Reduce(os.system, ("true",))}, evil)
    assert _first_line_then_close(data) == 0
    assert _first_line_then_close(evil) == 1


def test_piped_output_is_not_wrapped(tmp_path: Path) -> None:
    name = "encoder." + ".".join(f"block{i}" for i in range(40)) + ".attention.weight"
    path = tmp_path / "deep.pt"
    torch.save({name: torch.zeros(3)}, path)
    proc = subprocess.run([sys.executable, "-m", "safeload", "inspect", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert any(name in line for line in proc.stdout.splitlines())
    assert any(str(path) in line and "format torch_zip" in line for line in proc.stdout.splitlines())
