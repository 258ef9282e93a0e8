"""MLflow models loaded without running their code: ``safeload.mlflow.<flavor>.load_model(uri)``.

::

    import safeload.mlflow.transformers
    pipe = safeload.mlflow.transformers.load_model("models:/sentiment/7")

    import safeload.mlflow.pytorch
    net = safeload.mlflow.pytorch.load_model("models:/classifier/3", model=Net())

    import safeload.mlflow.sklearn
    clf = safeload.mlflow.sklearn.load_model("models:/churn/4")   # trusted_types from the entry

    import safeload.mlflow.pyfunc
    m = safeload.mlflow.pyfunc.load_model("models:/churn/4")       # dispatches on the pinned flavor

A ``models:/NAME/VERSION`` URI resolves only through ``trust.toml``: to the one ``[models]`` entry of a
``kind = "mlflow"`` registry with ``repo = NAME`` and ``revision = VERSION`` (or give the entry's own
name). Its pinned files are fetched through the fetch jail and verified into the store
(:mod:`safeload._trust.registries.mlflow`), MLmodel is checked before any loader runs
(:mod:`safeload._trust.mlmodel`), and the weights are loaded by safeload's own paths: the transformers
drop-in with ``trust_remote_code=False``; the jail's unpickler for a pytorch ``.pth`` checkpoint, or the
raw tensor records of a ``.pt2`` archive, whose tensors go into the module the caller passes; skops
with the entry's ``trusted_types`` for sklearn, a pickle converted to skops in the jail first. mlflow
itself is never imported, except by :func:`safeload.mlflow.pyfunc.load_model` for a model whose entry
says ``allow_code = true`` (the user's decision to run that model's pinned code).

Flavors: ``transformers``, ``pytorch`` (``pickle`` and ``pt2``), ``sklearn`` (``skops``, ``pickle``,
``cloudpickle``), and ``python_function`` through :mod:`safeload.mlflow.pyfunc`. Every other flavor is
refused with a message naming what is missing.

``models:/NAME@ALIAS`` resolves to the one mlflow entry with ``repo = NAME`` that records it was pinned
from ``ALIAS`` (``alias = "ALIAS"``, written by ``safeload pin mlflow://REGISTRY/NAME@ALIAS``): the
pinned version loads, and the server is never asked where the alias points now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from safeload._trust.fetched import FetchedModel
from safeload._trust.mlmodel import MLmodel, check_mlmodel
from safeload._trust.resolve import fetch_model
from safeload.errors import UntrustedSourceError
from safeload.policy import MlflowRegistrySpec, Policy, load_policy

__all__ = ["Verified", "fetch"]

_URI = re.compile(r"^models:/([^/@]+)/([0-9]+)/?$")
_ALIAS_URI = re.compile(r"^models:/([^/@]+)@([A-Za-z0-9_-]+)/?$")


@dataclass(frozen=True)
class Verified:
    """A fetched, verified MLflow model and its checked MLmodel."""

    fetched: FetchedModel
    mlmodel: MLmodel
    policy: Policy


def _entry_name(uri: str, policy: Policy) -> str:
    if uri in policy.models and isinstance(
        policy.registries.get(policy.models[uri].registry), MlflowRegistrySpec
    ):
        return uri
    if uri.startswith("models:/") and "@" in uri:
        return _alias_entry(uri, policy)
    m = _URI.match(uri)
    if m is None:
        raise UntrustedSourceError(
            f"{uri!r}: safeload.mlflow loads models:/NAME/VERSION URIs (or the name of an mlflow [models] "
            "entry); runs:/, file paths and other URIs are not supported"
        )
    name, version = m.group(1), m.group(2)
    found = [
        key for key, entry in policy.models.items()
        if entry.repo == name and entry.revision == version
        and isinstance(policy.registries.get(entry.registry), MlflowRegistrySpec)
    ]  # fmt: skip
    if len(found) != 1:
        why = "no [models] entry pins it" if not found else f"several entries pin it ({', '.join(found)})"
        raise UntrustedSourceError(
            f"{uri}: {why} in {policy.source or 'the built-in default policy'}; pin it with "
            f"`safeload pin mlflow://<registry>/{name}/{version}`"
        )
    return found[0]


def _alias_entry(uri: str, policy: Policy) -> str:
    """The one mlflow entry pinned from the alias ``uri`` names; the policy decides, never the server."""
    m = _ALIAS_URI.match(uri)
    if m is None:
        raise UntrustedSourceError(f"{uri!r}: expected models:/NAME@ALIAS (letters, digits, '_' and '-')")
    name, alias = m.group(1), m.group(2)
    found = [
        key for key, entry in policy.models.items()
        if entry.repo == name and entry.alias == alias
        and isinstance(policy.registries.get(entry.registry), MlflowRegistrySpec)
    ]  # fmt: skip
    if len(found) != 1:
        why = (
            f"no [models] entry with repo = {name!r} says it was pinned from alias {alias!r}"
            if not found
            else f"several entries say they were pinned from it ({', '.join(found)}); load one by its name"
        )
        raise UntrustedSourceError(
            f"{uri}: {why} in {policy.source or 'the built-in default policy'}. Aliases move, so safeload "
            f"never asks the server where one points at load time; `safeload pin mlflow://<registry>/{name}@"
            f"{alias}` resolves it once and records it"
        )
    return found[0]


def fetch_files(uri: str, *, policy: Policy | None = None) -> tuple[FetchedModel, Policy]:
    """Resolve ``uri`` through the policy and fetch and verify its files, MLmodel not yet checked.

    Raises:
        UntrustedSourceError: the URI is not pinned, or names an alias no entry was pinned from.
        IntegrityError: the server's answers or bytes differ from the pins.
    """
    pol = load_policy(policy)
    name = _entry_name(uri, pol)
    return fetch_model(name, policy=pol), pol


def fetch(uri: str, flavor: str, *, policy: Policy | None = None) -> Verified:
    """Resolve ``uri`` through the policy, fetch and verify its files, and check MLmodel for ``flavor``.

    Raises:
        UntrustedSourceError: the URI is not pinned, or names an alias no entry was pinned from.
        IntegrityError: the server's answers or bytes differ from the pins.
        UnsafeContentError: MLmodel (or a config) asks to run the model's own code.
        UnsupportedFormatError: the flavor is not the pinned one, or not supported yet.
    """
    fetched, pol = fetch_files(uri, policy=policy)
    where = f"{uri} ({fetched.name})"
    mlmodel = check_mlmodel(fetched.entry, fetched.folder, fetched.files, flavor, where)
    return Verified(fetched=fetched, mlmodel=mlmodel, policy=pol)
