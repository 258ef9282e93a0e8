"""Pickles written by Python 2 (protocol 0-2, strings as STRING/BINSTRING/SHORT_BINSTRING, numpy array
bytes that are not UTF-8): ``encoding=`` as ``pickle.load`` and ``torch.load`` take it, in the inert
unpickler, in execute mode and in ``safeload inspect``, bit for bit against ``pickle.load`` run in a
throwaway process; without it, an error that says which ``encoding`` to pass.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import safeload
from safeload.errors import UnsupportedFormatError
from tests.helpers.py2pickle import py2_dumps
from tests.helpers.reference import assert_same, references

_REPO = Path(__file__).resolve().parents[2]


def _py2_model() -> dict[str, Any]:
    """The shape of an sklearn-era estimator's fitted state as Python 2 pickled it."""
    g = np.random.default_rng(3)
    return {
        "coef_": g.standard_normal((3, 4)),  # float64 bytes: never valid UTF-8
        "intercept_": np.array([0.5, -1.25, 3e-3], dtype=np.float32),
        "classes_": np.array([1, 2, 7], dtype=np.int64),
        "fortran": np.asfortranarray(g.standard_normal((2, 3))),
        "label": b"caf\xe9",  # a Python 2 str holding latin-1 text
        "n_iter_": 17,
        "params": {"C": 1.0, "penalty": "l2", "tol": 1e-4},
    }


@pytest.fixture(scope="module")
def py2_files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("py2")
    files = {}
    for proto in (0, 1, 2):
        path = out / f"model-p{proto}.pkl"
        path.write_bytes(py2_dumps(_py2_model(), protocol=proto))
        files[proto] = path
    return files


def test_py2_pickle_without_encoding_says_which_to_pass(py2_files: dict[int, Path]) -> None:
    with pytest.raises(UnsupportedFormatError) as info:
        safeload.load(py2_files[2])
    message = str(info.value)
    assert "Python 2" in message and 'encoding="latin1"' in message and 'encoding="bytes"' in message
    assert "safeload opens" not in message  # it is a pickle safeload opens: never say otherwise


@pytest.mark.parametrize("encoding", ["latin1", "bytes"])
def test_py2_pickle_loads_bit_identical_with_encoding(py2_files: dict[int, Path], encoding: str) -> None:
    refs = references([(py2_files[p], f"pickle:{encoding}", None) for p in (0, 1, 2)])
    for proto, ref in zip((0, 1, 2), refs, strict=True):
        assert_same(safeload.load(py2_files[proto], encoding=encoding), ref)
    got = safeload.load(py2_files[2], encoding="latin-1")  # any spelling of the codec
    assert got["label"] == "café" and got["coef_"].dtype == np.float64


def test_py2_pickle_execute_mode_takes_encoding(py2_files: dict[int, Path]) -> None:
    ref = references([(py2_files[2], "pickle:latin1", None)])[0]
    assert_same(safeload.load(py2_files[2], encoding="latin1", unpickler="execute"), ref)
    with pytest.raises(UnsupportedFormatError, match='encoding="latin1"'):
        safeload.load(py2_files[2], unpickler="execute")


def test_pickle_module_is_the_standard_one_or_refused(py2_files: dict[int, Path]) -> None:
    got = safeload.load(py2_files[2], encoding="latin1", pickle_module=pickle)
    assert got["n_iter_"] == 17
    with pytest.raises(UnsupportedFormatError, match="pickle_module=numpy is not supported"):
        safeload.load(py2_files[2], pickle_module=np)
    with pytest.raises(UnsupportedFormatError, match="not a text encoding"):
        safeload.load(py2_files[2], encoding="hex")
    with pytest.raises(UnsupportedFormatError, match="not a codec"):
        safeload.load(py2_files[2], encoding="no-such-codec")


def test_inspect_takes_encoding(py2_files: dict[int, Path]) -> None:
    base = [sys.executable, "-m", "safeload", "inspect", "--json", str(py2_files[2])]
    proc = subprocess.run(base, capture_output=True, text=True, cwd=_REPO, timeout=120)
    assert proc.returncode == 2 and "--encoding latin1" in proc.stderr, proc.stderr
    proc = subprocess.run([*base, "--encoding", "latin1"], capture_output=True, text=True, cwd=_REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verdict"] == "data-only"
    arrays = {t["name"]: t for t in doc["tensors"]}
    assert arrays["coef_"]["dtype"] == "<f8" and arrays["coef_"]["shape"] == [3, 4]


def test_convert_takes_encoding(py2_files: dict[int, Path], tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    out = tmp_path / "model.safetensors"
    base = [sys.executable, "-m", "safeload", "convert", str(py2_files[2]), str(out)]
    proc = subprocess.run(base, capture_output=True, text=True, cwd=_REPO, timeout=120)
    assert proc.returncode == 2 and "--encoding latin1" in proc.stderr, proc.stderr
    assert not out.exists()
    proc = subprocess.run([*base, "--encoding", "latin1", "--json"], capture_output=True, text=True,
                          cwd=_REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = load_file(str(out))
    want = _py2_model()
    for name in ("coef_", "intercept_", "classes_", "fortran"):
        assert np.array_equal(got[name], want[name]) and got[name].dtype == want[name].dtype, name
    left = json.loads(proc.stdout)["files"][0]["left_out"]
    assert {"label", "n_iter_", "params"} <= set(left)
