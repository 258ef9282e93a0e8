"""MLmodel is untrusted YAML: read with ``yaml.safe_load`` and checked against the entry before any loader.

What a stock ``mlflow.<flavor>.load_model`` would run from a model, and what is refused here, each by
the field that asks for it:

- ``flavors.<f>.code`` (a ``code/`` folder put on ``sys.path``) and any pinned file under ``code/``;
- ``flavors.python_function.loader_module`` other than the flavors safeload handles, and
  ``python_model``/``model_code_path``/``model_config`` (a cloudpickled pyfunc, models-from-code);
- a flavor other than the pinned one (``flavor`` in the entry), and flavors safeload does not load yet;
- transformers: ``auto_map`` in the model's or a component's config (mlflow turns ``trust_remote_code``
  on for it), a model stored as a Hub reference (``source_model_revision``) or a local base-model path
  (``model_local_base``/``peft_adaptor``), class names that are not transformers' own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeload.errors import UnsafeContentError, UnsupportedFormatError
from safeload.policy import ModelEntry

__all__ = ["HANDLED", "MLmodel", "check_mlmodel"]

# flavor -> the pyfunc loader_module mlflow writes for it
HANDLED = {"transformers": "mlflow.transformers", "pytorch": "mlflow.pytorch"}
_MAX_MLMODEL = 1 << 20
_CODE_KEYS = ("python_model", "model_code_path", "model_config", "artifacts")


@dataclass(frozen=True)
class MLmodel:
    """The checked MLmodel: the flavor that will load and its configuration."""

    flavor: str
    conf: Mapping[str, Any]


def _refuse(where: str, field: str, why: str) -> UnsafeContentError:
    return UnsafeContentError(
        f"{where}: MLmodel {field}: {why}; safeload refuses it rather than run code from the model. Log the "
        "model without it (plain weights and configs), or load it with plain mlflow only if you trust its "
        "author's code"
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


def check_mlmodel(
    entry: ModelEntry, folder: Path, files: Mapping[str, str], want: str, where: str
) -> MLmodel:
    """Check the verified model ``folder`` (its pinned ``files``) for flavor ``want``; return what loads.

    Raises:
        UnsafeContentError: the model asks to run its own code (the field is named).
        UnsupportedFormatError: the flavor differs from the pin or from ``want``, or is not handled yet.
    """
    doc = read_mlmodel(folder, where)
    flavors: dict[str, Any] = doc["flavors"]
    for rel in files:
        if rel == "code" or rel.startswith("code/"):
            raise _refuse(where, "code", f"the model ships a code folder ({rel})")
    for name, conf in flavors.items():
        if isinstance(conf, dict) and conf.get("code") is not None:
            raise _refuse(where, f"flavors.{name}.code", f"names a code folder ({str(conf['code'])[:100]!r})")
    pyfunc = flavors.get("python_function")
    if pyfunc is not None:
        if not isinstance(pyfunc, dict):
            raise UnsupportedFormatError(f"{where}: MLmodel flavors.python_function is not a mapping")
        for key in _CODE_KEYS:
            if pyfunc.get(key) is not None:
                raise _refuse(where, f"flavors.python_function.{key}", "a pyfunc model is code")
        loader = pyfunc.get("loader_module")
        if loader is not None and loader not in HANDLED.values():
            raise _refuse(
                where, "flavors.python_function.loader_module",
                f"{str(loader)[:100]!r} is not a flavor safeload loads ({', '.join(sorted(HANDLED))})",
            )  # fmt: skip
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
    return MLmodel(flavor=want, conf=conf)


def _check_transformers(conf: Mapping[str, Any], folder: Path, where: str) -> None:
    import transformers

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
    if not isinstance(model_type, str) or not hasattr(transformers, model_type):
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
        if not isinstance(kind, str) or not hasattr(transformers, kind):
            raise _refuse(
                where, f"flavors.transformers.{comp}_type",
                f"{str(kind)[:100]!r} is not a transformers class (a custom class is code)",
            )  # fmt: skip
        for cfg in ("config.json", "tokenizer_config.json", "preprocessor_config.json"):
            if _has_auto_map(folder / "components" / comp / cfg):
                raise _refuse(where, f"components/{comp}/{cfg} auto_map", "it maps the component to code")
