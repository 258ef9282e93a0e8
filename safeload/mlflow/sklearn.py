"""``safeload.mlflow.sklearn.load_model``: an MLflow scikit-learn model, without unpickling in the host.

``mlflow.sklearn`` saves the estimator as ``model.skops`` (the default now) or as a pickle
(``serialization_format="pickle"`` or ``"cloudpickle"``, ``model.pkl``). mlflow loads a skops file
trusting the types list the model's own MLmodel names (``skops_trusted_types``), and a pickle by running
it. Here:

- a skops file is loaded with ``skops.io.load`` trusting skops's own safe types plus exactly the
  ``trusted_types`` of the model's ``[models]`` entry in ``trust.toml``; the model's own list is never
  read, and any other type is refused by name (:class:`~safeload.errors.UnsafeContentError`);
- a pickle is unpickled only inside the jail, checked there for functions, methods and lambdas (a
  ``FunctionTransformer``'s ``func`` is refused with the path to it), written there as skops, and that
  file is loaded on the host in the same way (:mod:`safeload.sklearn`).

::

    [models.churn]
    registry = "ml"
    repo = "churn"
    revision = "4"
    trusted_types = ["sklearn.ensemble._hist_gradient_boosting.binning._BinMapper"]   # your decision

skops and scikit-learn are the ``sklearn`` extra; mlflow is never imported.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from safeload._loading.loader import _open_source
from safeload._loading.skops import convert_in_jail, is_skops, load_skops, skops_io
from safeload.errors import UnsupportedFormatError
from safeload.policy import Policy

__all__ = ["load_model"]


def _table(name: str) -> str:
    return f"models.{name}" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f"models.{json.dumps(name)}"


def load_model(model_uri: str, dst_path: str | None = None, *, policy: Policy | None = None) -> Any:
    """Like ``mlflow.sklearn.load_model``: the scikit-learn estimator of ``model_uri``, no code run.

    ``model_uri`` is ``models:/NAME/VERSION`` or the name of a ``[models]`` entry of an mlflow registry;
    the types the model may hold beyond skops's safe set are the entry's ``trusted_types``.

    Raises:
        UntrustedSourceError, IntegrityError: see :func:`safeload.mlflow.fetch`.
        UnsafeContentError: MLmodel asks to run code; the model holds types the entry does not trust
            (named, with the line to add); or (a pickle) a function, method or lambda (the path named).
        UnsupportedFormatError: MLmodel's sklearn flavor is malformed, or the file is not a pickle skops
            can represent, nor a skops file.
        MissingModuleError: skops or scikit-learn (or a module the pickle needs) is not installed.
        SandboxError: the jail failed (and its subclasses for timeouts and limits).
        ValueError: ``dst_path`` is given.
    """
    if dst_path is not None:
        raise ValueError("dst_path is not supported: the verified files stay in safeload's store")
    from safeload.mlflow import fetch

    got = fetch(model_uri, "sklearn", policy=policy)
    return load_verified(got, model_uri)


def load_verified(got: Any, model_uri: str) -> Any:
    """The estimator of an already fetched and checked sklearn model (``safeload.mlflow.Verified``)."""
    sio = skops_io()
    conf = got.mlmodel.conf
    entry = got.fetched.entry
    where = f"{model_uri} ({got.fetched.name})"
    trusted = list(entry.trusted_types)
    fmt = conf.get("serialization_format", "pickle")
    path = got.fetched.folder / conf["pickled_model"]
    src, _ = _open_source(str(path), got.policy)
    try:
        skops = is_skops(src)
        if (fmt == "skops") != skops:
            raise UnsupportedFormatError(
                f"{where}: MLmodel says serialization_format {fmt!r}, but {conf['pickled_model']} is "
                + ("a skops file" if skops else "not a skops file")
            )
        fd = os.dup(src) if skops else convert_in_jail(src, got.policy)[0]
    finally:
        os.close(src)

    def refusal(missing: list[str]) -> str:
        listed = ", ".join(f'"{t}"' for t in missing)
        return (
            f"{where} holds types that are not trusted: {', '.join(missing)}. skops would build them, "
            "and building one runs its code; the model's own trusted-types list is never used. If you "
            f"trust them, add them to its entry in {got.policy.source or 'trust.toml'}: "
            f"[{_table(got.fetched.name)}] trusted_types = [{listed}]"
        )

    try:
        return load_skops(sio, fd, where, trusted, refusal)
    finally:
        os.close(fd)
