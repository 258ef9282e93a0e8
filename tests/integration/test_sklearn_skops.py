"""scikit-learn pickles through the jail into skops: ``safeload.sklearn.load`` and ``convert --to skops``.

A fitted Pipeline(StandardScaler, LogisticRegression) saved with joblib and with pickle comes back from
``safeload.sklearn.load`` predicting exactly what the original predicts; a FunctionTransformer holding a
function or a lambda is refused; a payload that would touch a file on load leaves no trace on the host; an
untrusted type is refused by name until the caller trusts it. Each runs in the host's default jail tier and
in the landlock tier (no namespaces).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")
sio = pytest.importorskip("skops.io")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402

import safeload  # noqa: E402
import safeload.sklearn  # noqa: E402
from tests.integration.test_cli import as_json, cli  # noqa: E402

pytestmark = pytest.mark.slow


class _Reduce:
    """Pickles as a call of ``fn(*args)``; only ever pickled here, never unpickled."""

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


@pytest.fixture(params=["default", "landlock"])
def tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The host's strongest jail, then the namespace-less one: the skops worker runs in both."""
    name: str = request.param
    if name != "default":
        monkeypatch.setenv("SAFELOAD_JAIL", name)
    return name


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    x = rng.rand(60, 4)
    return x, (x[:, 0] + x[:, 2] > 1.0).astype(int)


def _pipeline() -> Pipeline:
    x, y = _data()
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]).fit(x, y)


def _same_predictions(loaded: Any, original: Pipeline) -> None:
    x, _ = _data()
    assert type(loaded) is Pipeline
    assert np.array_equal(loaded.predict(x), original.predict(x))
    assert np.array_equal(loaded.predict_proba(x), original.predict_proba(x))
    assert np.array_equal(loaded.decision_function(x), original.decision_function(x))


@pytest.mark.parametrize("saver", ["joblib", "pickle"])
def test_pipeline_predicts_as_the_original(tmp_path: Path, tier: str, saver: str) -> None:
    original = _pipeline()
    path = tmp_path / f"model.{saver}"
    if saver == "joblib":
        import joblib

        joblib.dump(original, path)
    else:
        path.write_bytes(pickle.dumps(original))
    _same_predictions(safeload.sklearn.load(path), original)


def test_skops_input_loads_without_the_jail(tmp_path: Path) -> None:
    original = _pipeline()
    path = tmp_path / "model.skops"
    sio.dump(original, path)
    _same_predictions(safeload.sklearn.load(path), original)


def test_function_transformer_with_a_function_is_refused(tmp_path: Path, tier: str) -> None:
    path = tmp_path / "ft.pkl"
    model = Pipeline([("f", FunctionTransformer(func=os.system)), ("clf", LogisticRegression())])
    path.write_bytes(pickle.dumps(model))
    with pytest.raises(safeload.UnsafeContentError, match=r"FunctionTransformer.*func.*system"):
        safeload.sklearn.load(path)


def test_a_lambda_anywhere_is_refused_with_its_path(tmp_path: Path, tier: str) -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    model = _pipeline()
    model.named_steps["scale"].hook_ = {"after": lambda x: x}  # not a FunctionTransformer: found by the walk
    path = tmp_path / "lambda.pkl"
    path.write_bytes(cloudpickle.dumps(model))
    with pytest.raises(safeload.UnsafeContentError, match=r"hook_\['after'\].*function"):
        safeload.sklearn.load(path)


def test_a_payload_that_runs_on_load_leaves_no_trace(tmp_path: Path, tier: str) -> None:
    canary = tmp_path / "canary"
    payload = {"model": _pipeline(), "x": _Reduce(os.system, (f"touch {canary}",))}
    path = tmp_path / "payload.pkl"
    path.write_bytes(pickle.dumps(payload))
    try:
        loaded = safeload.sklearn.load(path)
    except safeload.SafeloadError:
        pass  # refused: contained either way
    else:
        # os.system ran in the jail, if at all: what crossed back is its exit status, plain data.
        assert isinstance(loaded["x"], int)
    assert not canary.exists()
    assert not list(tmp_path.glob("canary*"))


def test_untrusted_type_is_refused_by_name_until_trusted(tmp_path: Path, tier: str) -> None:
    original = _pipeline()
    original.named_steps["clf"].seen_ = collections.Counter({"a": 1})
    path = tmp_path / "counter.joblib"
    import joblib

    joblib.dump(original, path)
    with pytest.raises(safeload.UnsafeContentError, match=r"collections\.Counter.*trusted="):
        safeload.sklearn.load(path)
    loaded = safeload.sklearn.load(path, trusted=["collections.Counter"])
    _same_predictions(loaded, original)
    assert loaded.named_steps["clf"].seen_ == collections.Counter({"a": 1})


def test_trusted_must_be_a_list_of_names(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    sio.dump(_pipeline(), path)
    with pytest.raises(TypeError):
        safeload.sklearn.load(path, trusted=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        safeload.sklearn.load(path, trusted="collections.Counter")


def test_cli_convert_to_skops(tmp_path: Path, tier: str) -> None:
    original = _pipeline()
    original.named_steps["clf"].seen_ = collections.Counter({"a": 1})
    src = tmp_path / "model.pkl"
    src.write_bytes(pickle.dumps(original))
    out = tmp_path / "model.skops"
    proc = cli("convert", src, "--to", "skops", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = as_json(proc)
    assert doc["untrusted_types"] == ["collections.Counter"]
    assert doc["output"] == str(out)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    _same_predictions(sio.load(out, trusted=doc["untrusted_types"]), original)

    # The positional OUT and the plain output name the types to trust.
    again = tmp_path / "again.skops"
    proc = cli("convert", src, again, "--to", "skops")
    assert proc.returncode == 0, proc.stderr
    assert "collections.Counter" in proc.stdout
    assert json.loads(json.dumps(sio.get_untrusted_types(file=again))) == ["collections.Counter"]


def test_cli_convert_to_skops_refuses_a_function(tmp_path: Path) -> None:
    src = tmp_path / "ft.pkl"
    src.write_bytes(pickle.dumps(FunctionTransformer(func=os.system)))
    out = tmp_path / "ft.skops"
    proc = cli("convert", src, "--to", "skops", "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert "FunctionTransformer" in proc.stderr
    assert not out.exists()


def test_importing_safeload_imports_neither_skops_nor_sklearn() -> None:
    import subprocess
    import sys

    code = (
        "import sys, safeload, safeload._loading.loader; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('skops', 'sklearn')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
