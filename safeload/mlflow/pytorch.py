"""``safeload.mlflow.pytorch.load_model``: the weights of an MLflow pytorch model, into your module.

``mlflow.pytorch`` saves the whole module pickled by value (``data/model.pth``), so loading it as mlflow
does runs the pickle's code. Here the checkpoint is read by the jail's inert unpickler
(:func:`safeload.load`), turned into the state dict that module would give (:func:`safeload.state_dict`)
and loaded into the module the caller builds from its own code: ``load_model(uri, model=Net())``.
Models saved with ``serialization_format="pt2"`` (``torch.export``) are not supported yet.
"""

from __future__ import annotations

from typing import Any

from safeload.errors import UnsupportedFormatError
from safeload.policy import Policy

__all__ = ["load_model"]


def load_model(
    model_uri: str,
    dst_path: str | None = None,
    *,
    model: Any,
    map_location: Any = None,
    strict: bool = True,
    policy: Policy | None = None,
) -> Any:
    """Load the MLflow pytorch model ``model_uri``'s weights into ``model`` (an ``nn.Module``) and return it.

    Raises:
        UntrustedSourceError, IntegrityError, UnsafeContentError: see :func:`safeload.mlflow.fetch`.
        UnsupportedFormatError: the model was saved as ``pt2``, or holds no ``.pth`` checkpoint.
        TypeError: ``model`` is not an ``nn.Module``.
        RuntimeError: the weights do not fit ``model`` (``strict``), as ``load_state_dict`` raises.
    """
    import torch

    from safeload import load, state_dict
    from safeload.mlflow import fetch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            "model= must be the nn.Module to load the weights into (built by your own code): a module "
            "pickled by value is code, which safeload does not run"
        )
    if dst_path is not None:
        raise ValueError("dst_path is not supported: the verified files stay in safeload's store")
    got = fetch(model_uri, "pytorch", policy=policy)
    conf = got.mlmodel.conf
    where = f"{model_uri} ({got.fetched.name})"
    data = conf.get("model_data", "data")
    rel = f"{data}/model.pth"
    if rel not in got.fetched.files:
        pt2 = f"{data}/model.pt2" in got.fetched.files
        raise UnsupportedFormatError(
            f"{where}: "
            + (
                "the model was saved as pt2 (torch.export), which safeload.mlflow.pytorch does not load yet"
                if pt2
                else f"the model has no {rel} (MLmodel flavors.pytorch.model_data)"
            )
            + "; log it with serialization_format='pickle'"
        )
    obj = load(str(got.fetched.folder / rel), map_location, policy=got.policy)
    model.load_state_dict(state_dict(obj), strict=strict)
    return model
