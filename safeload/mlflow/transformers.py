"""``safeload.mlflow.transformers.load_model``: an MLflow transformers model, through safeload's drop-in.

Returns what ``mlflow.transformers.load_model`` returns: a ``transformers`` pipeline for the logged task
(``return_type="pipeline"``, the default) or the dict of its parts (``"components"``: ``task``,
``model`` and each component). The model and components load from the verified ``model/`` and
``components/<name>/`` folders through :func:`safeload.transformers.from_pretrained`
(``trust_remote_code=False``, safetensors only, ``.bin`` weights converted in the jail).
"""

from __future__ import annotations

from typing import Any

import transformers as _hf

from safeload.policy import Policy

__all__ = ["load_model"]


def load_model(
    model_uri: str,
    dst_path: str | None = None,
    return_type: str = "pipeline",
    device: Any = None,
    *,
    policy: Policy | None = None,
    **kwargs: Any,
) -> Any:
    """Like ``mlflow.transformers.load_model``, without running the model's code.

    ``dst_path`` is not supported (the files stay in the store); ``kwargs`` go to the pipeline.

    Raises:
        UntrustedSourceError, IntegrityError, UnsafeContentError, UnsupportedFormatError: see
            :func:`safeload.mlflow.fetch`; and the errors of :func:`safeload.transformers.from_pretrained`.
        ValueError: ``return_type`` is not ``"pipeline"`` or ``"components"``, or ``dst_path`` is given.
    """
    from safeload.mlflow import fetch

    if return_type not in ("pipeline", "components"):
        raise ValueError(f"return_type must be 'pipeline' or 'components', got {return_type!r}")
    if dst_path is not None:
        raise ValueError("dst_path is not supported: the verified files stay in safeload's store")
    got = fetch(model_uri, "transformers", policy=policy)
    return load_verified(got, return_type, device, **kwargs)


def load_verified(got: Any, return_type: str = "pipeline", device: Any = None, **kwargs: Any) -> Any:
    """The pipeline (or parts) of an already fetched and checked transformers model (``Verified``)."""
    from safeload._integrations.guard import inside, refuse_host_unpickling
    from safeload.transformers import from_pretrained

    conf = got.mlmodel.conf
    folder = got.fetched.folder
    load_kwargs: dict[str, Any] = {}
    dtype = conf.get("torch_dtype")
    if isinstance(dtype, str) and dtype.startswith("torch."):
        import torch

        value = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(value, torch.dtype):
            load_kwargs["dtype"] = value
    model_cls = getattr(_hf, conf["pipeline_model_type"])
    parts: dict[str, Any] = {"task": conf.get("task")}
    parts["model"] = from_pretrained(model_cls, str(folder / conf["model_binary"]), **load_kwargs)
    for comp in conf.get("components") or []:
        cls = getattr(_hf, conf[f"{comp}_type"])
        parts[comp] = from_pretrained(cls, str(folder / "components" / comp))
    if return_type == "components":
        return parts
    if device is not None:
        kwargs["device"] = device
    # Every part is an object loaded from the verified folders: the pipeline reads nothing else.
    with refuse_host_unpickling(), inside():
        return _hf.pipeline(**parts, **kwargs)
