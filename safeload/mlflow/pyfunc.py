"""``safeload.mlflow.pyfunc.load_model``: an MLflow model by its pinned flavor, or its code if you allow it.

``mlflow.pyfunc.load_model`` imports the ``loader_module`` MLmodel names and lets it load the model,
which for most models means unpickling, and for a custom pyfunc (``python_model``, cloudpickled), a
models-from-code ``.py`` file or a ``loader_module`` shipped in the model's ``code/`` folder, running the
model author's code. Here the pinned ``flavor`` of the model's ``[models]`` entry decides:

- ``sklearn``: :func:`safeload.mlflow.sklearn.load_model` (skops, the entry's ``trusted_types``);
- ``transformers``: :func:`safeload.mlflow.transformers.load_model` (the pipeline);
- ``pytorch``: refused; the weights need the module they go into, built by your code:
  ``safeload.mlflow.pytorch.load_model(uri, model=Net())``.

The result is a :class:`PyFuncModel` whose ``predict(data)`` calls the estimator's ``predict_fn`` (as
mlflow's sklearn wrapper does) or the pipeline; ``get_raw_model()`` gives the estimator or pipeline.
mlflow's own input-schema enforcement and transformers input/output conversions are not applied.

A model that carries code is refused, naming the MLmodel field that asks for it, unless its entry says
``allow_code = true``. That is the user's explicit decision to run that model's code, as
``trust_remote_code`` is for transformers: the files are still fetched only as pinned and verified (the
folder holds exactly the pinned files, so every code file is pinned), and then plain
``mlflow.pyfunc.load_model`` runs on that verified folder, in this process, with the model's code. mlflow
is imported only then, and must be installed. Pin such a model with
``safeload pin mlflow://REGISTRY/NAME/VERSION --allow-code`` after reviewing its code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from safeload.errors import IntegrityError, MissingModuleError, UnsupportedFormatError
from safeload.policy import Policy

__all__ = ["PyFuncModel", "load_model"]


@dataclass(frozen=True)
class PyFuncModel:
    """A model loaded by a safeload flavor path, with mlflow's ``predict`` shape."""

    flavor: str
    raw: Any
    predict_fn: str = "predict"

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """The model's prediction for ``data``: the estimator's ``predict_fn``, or the pipeline's call
        (``params`` are its keyword arguments; an estimator takes none).

        Raises:
            TypeError: ``params`` given to an estimator.
        """
        if self.flavor == "transformers":
            return self.raw(data, **(params or {}))
        if params:
            raise TypeError(f"a {self.flavor} model takes no params")
        return getattr(self.raw, self.predict_fn)(data)

    def get_raw_model(self) -> Any:
        """The estimator or pipeline itself."""
        return self.raw


def load_model(
    model_uri: str,
    suppress_warnings: bool = False,
    dst_path: str | None = None,
    model_config: dict[str, Any] | None = None,
    *,
    policy: Policy | None = None,
) -> Any:
    """Like ``mlflow.pyfunc.load_model``, through the flavor the entry pins; code only if the entry allows it.

    Returns a :class:`PyFuncModel` for a sklearn or transformers model, or mlflow's own ``PyFuncModel``
    for a model that runs its code and whose entry says ``allow_code = true``. ``suppress_warnings`` and
    ``model_config`` reach mlflow only on that path.

    Raises:
        UntrustedSourceError, IntegrityError: see :func:`safeload.mlflow.fetch`.
        UnsafeContentError: the model carries code (the MLmodel field named) and its entry does not
            allow code; or what the flavor's loader raises.
        UnsupportedFormatError: the pinned flavor is ``pytorch`` (use :mod:`safeload.mlflow.pytorch`
            with ``model=``), or not one safeload loads.
        MissingModuleError: the entry allows code but mlflow is not installed.
        ValueError: ``dst_path`` is given.
    """
    from safeload._trust.mlmodel import _refuse, check_mlmodel, code_fields, read_mlmodel
    from safeload.mlflow import Verified, fetch_files

    if dst_path is not None:
        raise ValueError("dst_path is not supported: the verified files stay in safeload's store")
    fetched, pol = fetch_files(model_uri, policy=policy)
    entry = fetched.entry
    where = f"{model_uri} ({fetched.name})"
    code = code_fields(read_mlmodel(fetched.folder, where), fetched.files)
    if code and entry.allow_code:
        mlmodel = check_mlmodel(entry, fetched.folder, fetched.files, "python_function", where)
        return _with_mlflow(fetched, mlmodel.code, suppress_warnings, model_config, where)
    if code:
        raise _refuse(where, *code[0])
    flavor = entry.flavor or ""
    if flavor == "pytorch":
        raise UnsupportedFormatError(
            f"{where}: a pytorch model's weights go into a module your code builds; load it with "
            "safeload.mlflow.pytorch.load_model(uri, model=YourModule())"
        )
    got = Verified(fetched, check_mlmodel(entry, fetched.folder, fetched.files, flavor, where), pol)
    if flavor == "sklearn":
        from safeload.mlflow.sklearn import load_verified as load_sklearn

        predict_fn = read_mlmodel(fetched.folder, where)["flavors"].get("python_function", {})
        fn = predict_fn.get("predict_fn", "predict") if isinstance(predict_fn, dict) else "predict"
        return PyFuncModel("sklearn", load_sklearn(got, model_uri), str(fn))
    if flavor == "transformers":
        from safeload.mlflow.transformers import load_verified as load_transformers

        return PyFuncModel("transformers", load_transformers(got), "__call__")
    raise UnsupportedFormatError(f"{where}: the {flavor!r} flavor is not supported by safeload.mlflow.pyfunc")


def _with_mlflow(
    fetched: Any, fields: tuple[str, ...], suppress_warnings: bool, model_config: Any, where: str
) -> Any:
    """Plain ``mlflow.pyfunc.load_model`` on the verified folder: the user allowed this model's code."""
    import logging

    folder = fetched.folder
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    if not fetched.entry.files or on_disk != set(fetched.entry.files):
        extra = sorted(on_disk ^ set(fetched.entry.files))[:5]
        raise IntegrityError(f"{where}: the verified folder is not exactly the pinned files ({extra})")
    try:
        import mlflow.pyfunc
    except ImportError as exc:
        raise MissingModuleError(
            f"{where}: the entry allows code, and running it needs mlflow: pip install mlflow", name="mlflow"
        ) from exc
    from safeload._integrations.guard import inside

    logging.getLogger(__name__).warning(
        "%s: running the model's own code with mlflow (allow_code = true; %s)", where, ", ".join(fields)
    )
    with inside():  # patched mlflow entry points call straight through
        return mlflow.pyfunc.load_model(
            str(folder), suppress_warnings=suppress_warnings, model_config=model_config
        )
