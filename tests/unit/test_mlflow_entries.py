"""MLflow entries without a server: ``trusted_types`` in trust.toml; MLmodel checks for sklearn, code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from safeload._trust.mlmodel import check_mlmodel
from safeload._trust.pinning import render_entry
from safeload.errors import PolicyError, UnsafeContentError, UnsupportedFormatError
from safeload.policy import ModelEntry, load_policy, parse_policy
from tests.helpers.trust import write_policy

PIN = "sha256:" + "0" * 64


def _policy(tmp_path: Path, **extra: Any) -> Path:
    entry = {
        "registry": "ml", "repo": "churn", "revision": "4", "source": "models:/m-1", "flavor": "sklearn",
        **extra, "files": {"MLmodel": PIN, "model.skops": PIN},
    }  # fmt: skip
    return write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"ml": {"kind": "mlflow", "endpoint": "http://127.0.0.1:1"}},
        models={"churn": entry},
    )


def test_trusted_types_are_parsed_checked_and_written_back(tmp_path: Path) -> None:
    types = ["sklearn.tree._tree.Tree", "collections.Counter"]
    entry = load_policy(_policy(tmp_path, trusted_types=types)).models["churn"]
    assert entry.trusted_types == tuple(types)
    assert load_policy(_policy(tmp_path)).models["churn"].trusted_types == ()
    text = render_entry(entry)
    assert 'trusted_types = ["sklearn.tree._tree.Tree", "collections.Counter"]' in text
    head = write_policy(
        tmp_path / "head.toml",
        store=tmp_path / "store",
        registries={"ml": {"kind": "mlflow", "endpoint": "http://127.0.0.1:1"}},
    ).read_text()
    again = parse_policy(head + "\n" + text)
    assert again.models["churn"].trusted_types == tuple(types)
    for bad, why in (
        ("sklearn.tree._tree.Tree", "list of dotted type names"),
        (["Tree"], "list of dotted type names"),
        (["os.system; x"], "list of dotted type names"),
        ([1], "list of dotted type names"),
        (["a.B", "a.B"], "twice"),
    ):
        with pytest.raises(PolicyError, match=rf"models\.churn\.trusted_types: .*{why}"):
            load_policy(_policy(tmp_path, trusted_types=bad))


def test_trusted_types_belong_to_mlflow_entries_only(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path / "trust.toml",
        store=tmp_path / "store",
        registries={"local": {"kind": "directory", "path": str(tmp_path)}},
        models={"m": {"registry": "local", "repo": "org/m", "files": {"a": PIN}, "trusted_types": ["a.B"]}},
    )
    with pytest.raises(PolicyError, match="trusted_types"):
        load_policy(path)


def _model(tmp_path: Path, mlmodel: str, files: tuple[str, ...] = ("model.pkl",)) -> dict[str, str]:
    (tmp_path / "MLmodel").write_text(mlmodel)
    return {"MLmodel": PIN, **dict.fromkeys(files, PIN)}


def _entry(flavor: str, allow_code: bool = False) -> ModelEntry:
    return ModelEntry(
        name="m", registry="ml", repo="m", revision="1", source="s", flavor=flavor, allow_code=allow_code
    )


_SKLEARN = """flavors:
  python_function: {loader_module: mlflow.sklearn, model_path: model.pkl, predict_fn: %s}
  sklearn: {pickled_model: %s, serialization_format: %s, code: null}
"""


@pytest.mark.parametrize(
    ("values", "error", "field"),
    [
        (("predict", "model.pkl", "cloudpickle"), None, ""),
        (("predict_proba", "model.pkl", "pickle"), None, ""),
        (("predict", "../x.pkl", "pickle"), UnsupportedFormatError, "pickled_model"),
        (("predict", "other.pkl", "pickle"), UnsupportedFormatError, "pickled_model"),
        (("predict", "model.pkl", "joblib"), UnsupportedFormatError, "serialization_format"),
        (("__reduce__", "model.pkl", "pickle"), UnsupportedFormatError, "predict_fn"),
    ],
)
def test_sklearn_mlmodel_checks(
    tmp_path: Path, values: tuple[str, str, str], error: type[Exception] | None, field: str
) -> None:
    files = _model(tmp_path, _SKLEARN % values)
    if error is None:
        assert check_mlmodel(_entry("sklearn"), tmp_path, files, "sklearn", "m").flavor == "sklearn"
    else:
        with pytest.raises(error, match=field):
            check_mlmodel(_entry("sklearn"), tmp_path, files, "sklearn", "m")


def test_code_passes_only_as_python_function_on_an_entry_that_allows_it(tmp_path: Path) -> None:
    files = _model(
        tmp_path,
        "flavors:\n  python_function: {loader_module: evil, code: code}\n",
        ("code/evil.py",),
    )
    with pytest.raises(UnsafeContentError, match=r"MLmodel code: .*set allow_code = true"):
        check_mlmodel(_entry("python_function"), tmp_path, files, "python_function", "m")
    allowed = check_mlmodel(_entry("python_function", True), tmp_path, files, "python_function", "m")
    assert allowed.code == ("code", "flavors.python_function.code", "flavors.python_function.loader_module")
    with pytest.raises(UnsafeContentError, match="the flavor loaders never do"):
        check_mlmodel(_entry("python_function", True), tmp_path, files, "sklearn", "m")
