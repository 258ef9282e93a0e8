"""MLmodel is untrusted YAML: read with ``yaml.safe_load`` and checked against the entry before any loader.

What a stock ``mlflow.<flavor>.load_model`` would run from a model, and what is refused here, each by
the field that asks for it:

- ``flavors.<f>.code`` (a ``code/`` folder put on ``sys.path``) and any pinned file under ``code/``;
- ``flavors.python_function.loader_module`` other than the flavors safeload handles, and
  ``python_model``/``model_code_path``/``model_config`` (a cloudpickled pyfunc, models-from-code);
- a flavor other than the pinned one (``flavor`` in the entry), and flavors safeload does not load yet;
- transformers: ``auto_map`` in the model's or a component's config (mlflow turns ``trust_remote_code``
  on for it), a model stored as a Hub reference (``source_model_revision``) or a local base-model path
  (``model_local_base``/``peft_adaptor``), class names that are not transformers' own;
- sklearn: a ``pickled_model`` that is not a pinned file at the top of the model, a
  ``serialization_format`` other than skops, pickle or cloudpickle, a ``predict_fn`` other than the
  prediction methods mlflow's own wrapper allows.

A model that asks to run its code passes only as ``python_function`` on an entry with
``allow_code = true`` (:func:`safeload.mlflow.pyfunc.load_model`), the user's explicit trust decision.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeload.errors import UnsafeContentError, UnsupportedFormatError
from safeload.policy import ModelEntry

__all__ = ["HANDLED", "MLmodel", "check_mlmodel", "code_fields", "read_mlmodel", "trusted_types_hint"]

# flavor -> the pyfunc loader_module mlflow writes for it
HANDLED = {"transformers": "mlflow.transformers", "pytorch": "mlflow.pytorch", "sklearn": "mlflow.sklearn"}
SKLEARN_FORMATS = ("skops", "pickle", "cloudpickle")
# what mlflow's sklearn pyfunc wrapper may call (``pyfunc_predict_fn``)
SKLEARN_PREDICT_FNS = ("predict", "predict_proba", "predict_log_proba", "predict_joint_log_proba", "score")
_MAX_MLMODEL = 1 << 20
_CODE_KEYS = ("python_model", "model_code_path", "model_config", "artifacts")


@dataclass(frozen=True)
class MLmodel:
    """The checked MLmodel: the flavor that will load and its configuration."""

    flavor: str
    conf: Mapping[str, Any]
    # python_function on an entry with allow_code: the MLmodel fields that make it run its code
    code: tuple[str, ...] = ()


def _refuse(where: str, field: str, why: str, allow_code: bool = False) -> UnsafeContentError:
    trust = (
        "the entry allows code, so safeload.mlflow.pyfunc.load_model runs it; the flavor loaders never do"
        if allow_code
        else "if you trust its author's code, review the pinned files and set allow_code = true on the "
        "[models] entry, then load it with safeload.mlflow.pyfunc.load_model"
    )
    return UnsafeContentError(
        f"{where}: MLmodel {field}: {why}; safeload refuses it rather than run code from the model. Log the "
        f"model without it (plain weights and configs), or, {trust}"
    )


def read_mlmodel(folder: Path, where: str) -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped,unused-ignore]

    path = folder / "MLmodel"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_MLMODEL + 1)
    except FileNotFoundError:
        raise UnsupportedFormatError(f"{where}: the model has no MLmodel file; pin it") from None
    if len(raw) > _MAX_MLMODEL:
        raise UnsafeContentError(f"{where}: MLmodel is larger than {_MAX_MLMODEL} bytes")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UnsupportedFormatError(f"{where}: MLmodel is not YAML safeload reads: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise UnsupportedFormatError(f"{where}: MLmodel has no 'flavors' mapping")
    return doc


def _has_auto_map(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("auto_map") is not None


def code_fields(doc: Mapping[str, Any], files: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every way MLmodel (and the pinned file list) asks to run the model's own code: (field, why)."""
    flavors: Mapping[str, Any] = doc["flavors"]
    found: list[tuple[str, str]] = []
    for rel in sorted(files):
        if rel == "code" or rel.startswith("code/"):
            found.append(("code", f"the model ships a code folder ({rel})"))
            break
    for name, conf in flavors.items():
        if isinstance(conf, dict) and conf.get("code") is not None:
            found.append((f"flavors.{name}.code", f"names a code folder ({str(conf['code'])[:100]!r})"))
    pyfunc = flavors.get("python_function")
    if isinstance(pyfunc, dict):
        for key in _CODE_KEYS:
            if pyfunc.get(key) is not None:
                found.append((f"flavors.python_function.{key}", "a pyfunc model is code"))
        loader = pyfunc.get("loader_module")
        if loader is not None and loader not in HANDLED.values():
            found.append((
                "flavors.python_function.loader_module",
                f"{str(loader)[:100]!r} is not a flavor safeload loads ({', '.join(sorted(HANDLED))})",
            ))  # fmt: skip
    return found


def check_mlmodel(
    entry: ModelEntry, folder: Path, files: Mapping[str, str], want: str, where: str
) -> MLmodel:
    """Check the verified model ``folder`` (its pinned ``files``) for flavor ``want``; return what loads.

    ``want`` is a flavor safeload loads (:data:`HANDLED`), or ``"python_function"`` for a model that runs
    its own code, which passes only when the entry says ``allow_code = true`` (``code`` is then set).

    Raises:
        UnsafeContentError: the model asks to run its own code (the field is named), and ``want`` is not
            ``"python_function"`` on an entry that allows code.
        UnsupportedFormatError: the flavor differs from the pin or from ``want``, or is not handled yet.
    """
    doc = read_mlmodel(folder, where)
    flavors: dict[str, Any] = doc["flavors"]
    pyfunc = flavors.get("python_function")
    if pyfunc is not None and not isinstance(pyfunc, dict):
        raise UnsupportedFormatError(f"{where}: MLmodel flavors.python_function is not a mapping")
    code = code_fields(doc, files)
    if want == "python_function" and entry.allow_code:
        if not isinstance(pyfunc, dict):
            raise UnsupportedFormatError(
                f"{where}: MLmodel has no python_function flavor (it has {sorted(flavors)})"
            )
        return MLmodel(flavor=want, conf=pyfunc, code=tuple(field for field, _ in code))
    if code:
        field, why = code[0]
        raise _refuse(where, field, why, entry.allow_code)
    if entry.flavor is not None and entry.flavor not in flavors:
        raise UnsupportedFormatError(
            f"{where}: MLmodel has flavors {sorted(flavors)}, not the pinned flavor {entry.flavor!r}"
        )
    if entry.flavor is not None and entry.flavor != want:
        raise UnsupportedFormatError(
            f"{where}: the entry pins flavor {entry.flavor!r}; load it with safeload.mlflow.{entry.flavor}"
        )
    if want not in HANDLED:
        raise UnsupportedFormatError(
            f"{where}: the {want!r} flavor is not supported by safeload.mlflow yet (supported: "
            f"{', '.join(sorted(HANDLED))})"
        )
    conf = flavors.get(want)
    if not isinstance(conf, dict):
        raise UnsupportedFormatError(f"{where}: MLmodel has no {want!r} flavor (it has {sorted(flavors)})")
    if want == "transformers":
        _check_transformers(conf, folder, where)
    elif want == "sklearn":
        _check_sklearn(conf, pyfunc, files, where)
    return MLmodel(flavor=want, conf=conf)


def _check_sklearn(
    conf: Mapping[str, Any], pyfunc: Mapping[str, Any] | None, files: Mapping[str, str], where: str
) -> None:
    rel = conf.get("pickled_model")
    if not isinstance(rel, str) or "/" in rel or rel in ("", ".", "..") or rel not in files:
        raise UnsupportedFormatError(
            f"{where}: MLmodel flavors.sklearn.pickled_model {str(rel)[:100]!r} is not a pinned file at the "
            "top of the model"
        )
    fmt = conf.get("serialization_format", "pickle")
    if fmt not in SKLEARN_FORMATS:
        raise UnsupportedFormatError(
            f"{where}: MLmodel flavors.sklearn.serialization_format {str(fmt)[:40]!r} is not one of "
            f"{', '.join(SKLEARN_FORMATS)}"
        )
    predict_fn = (pyfunc or {}).get("predict_fn", "predict")
    if predict_fn not in SKLEARN_PREDICT_FNS:
        raise UnsupportedFormatError(
            f"{where}: MLmodel flavors.python_function.predict_fn {str(predict_fn)[:60]!r} is not one of "
            f"{', '.join(SKLEARN_PREDICT_FNS)}"
        )


@functools.cache
def _transformers_names() -> frozenset[str]:
    """The names transformers exports, listed by its lazy module without importing a model (or torch);
    hasattr() would import the class's module to answer. Listing them takes ~0.2 s, so once a process."""
    import transformers

    return frozenset(dir(transformers))


def _check_transformers(conf: Mapping[str, Any], folder: Path, where: str) -> None:
    own = _transformers_names()

    for key, why in (
        ("source_model_revision", "the model is a reference to a Hub repository, not files in the version"),
        ("model_local_base", "the model loads its base weights from a local path outside the version"),
        ("peft_adaptor", "PEFT adapters in MLflow models are not supported yet"),
    ):
        if conf.get(key) is not None:
            raise UnsupportedFormatError(f"{where}: MLmodel flavors.transformers.{key}: {why}")
    binary = conf.get("model_binary")
    if not isinstance(binary, str) or "/" in binary or binary in ("", ".", ".."):
        raise UnsupportedFormatError(f"{where}: MLmodel flavors.transformers.model_binary: {binary!r}")
    model_type = conf.get("pipeline_model_type")
    if not isinstance(model_type, str) or model_type not in own:
        raise _refuse(
            where, "flavors.transformers.pipeline_model_type",
            f"{str(model_type)[:100]!r} is not a transformers class (a custom class is code)",
        )  # fmt: skip
    if _has_auto_map(folder / binary / "config.json"):
        raise _refuse(where, f"{binary}/config.json auto_map", "it maps the model to code in the repository")
    components = conf.get("components") or []
    if not isinstance(components, list):
        raise UnsupportedFormatError(f"{where}: MLmodel flavors.transformers.components is not a list")
    for comp in components:
        if comp not in ("tokenizer", "feature_extractor", "image_processor", "processor"):
            raise UnsupportedFormatError(f"{where}: MLmodel flavors.transformers.components: {comp!r}")
        kind = conf.get(f"{comp}_type")
        if not isinstance(kind, str) or kind not in own:
            raise _refuse(
                where, f"flavors.transformers.{comp}_type",
                f"{str(kind)[:100]!r} is not a transformers class (a custom class is code)",
            )  # fmt: skip
        for cfg in ("config.json", "tokenizer_config.json", "preprocessor_config.json"):
            if _has_auto_map(folder / "components" / comp / cfg):
                raise _refuse(where, f"components/{comp}/{cfg} auto_map", "it maps the component to code")


def trusted_types_hint(folder: Path, doc: Mapping[str, Any], name: str) -> str:
    """The comment ``safeload pin`` writes above a sklearn entry: what ``trusted_types`` could hold (the
    types the skops file names beyond skops's safe set, read from its schema: nothing is built)."""
    conf = doc["flavors"].get("sklearn") or {}
    path = folder / str(conf.get("pickled_model"))
    head = (
        f"# {name}: skops.io.load trusts only its own safe types plus the entry's trusted_types; the\n"
        "# model's own list (MLmodel skops_trusted_types) is never used. "
    )
    if conf.get("serialization_format") != "skops":
        return head + (
            "A pickle is converted to skops in the jail at load;\n# `safeload convert "
            "MODEL.pkl --to skops` prints the types it holds. Trust them by adding to the entry:\n"
            "# trusted_types = []\n"
        )
    try:
        import skops.io as sio

        needed = sorted({str(t) for t in sio.get_untrusted_types(file=str(path))})
    except Exception:  # skops missing, or a file it cannot read: the load will say
        needed = None
    if needed == []:
        return ""
    listed = "[" + ", ".join(json.dumps(t) for t in needed) + "]" if needed else "[]"
    what = "The skops file holds these; review them" if needed else "Review the types the skops file holds"
    return head + f"{what}, then\n# move this line into the entry:\n# trusted_types = {listed}\n"
