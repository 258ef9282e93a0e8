"""``safeload.mlflow.pytorch.load_model``: the weights of an MLflow pytorch model, into your module.

``mlflow.pytorch`` saves the whole module pickled by value (``data/model.pth``), so loading it as mlflow
does runs the pickle's code. Here the checkpoint is read by the jail's inert unpickler
(:func:`safeload.load`), turned into the state dict that module would give (:func:`safeload.state_dict`)
and loaded into the module the caller builds from its own code: ``load_model(uri, model=Net())``.

A model saved with ``serialization_format="pt2"`` (``torch.export``, ``data/model.pt2``) is read without
``torch.export.load``, which would unpickle the archive's constants and example inputs and rebuild its
graph: the weights config (JSON) and the raw tensor records it names are read directly
(:mod:`safeload.mlflow._pt2`), a weight torch stored as a pickle (a tensor subclass) is read in the jail,
and the graph, constants and example inputs are never opened. The weights go into ``model`` as for a
``.pth``: the module's code is yours, the archive's graph is not run.
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
        UnsupportedFormatError: the model holds neither a ``.pth`` checkpoint nor a ``.pt2`` archive, or
            the archive is not one torch.export writes (its weights config malformed or out of bounds).
        SandboxError: the jail failed reading a pickled checkpoint or weight.
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
    if not isinstance(data, str) or data.startswith("/") or ".." in data.split("/"):
        raise UnsupportedFormatError(f"{where}: MLmodel flavors.pytorch.model_data is {str(data)[:100]!r}")
    rel, pt2 = f"{data}/model.pth", f"{data}/model.pt2"
    weights: dict[str, Any]
    if rel in got.fetched.files:
        weights = state_dict(load(str(got.fetched.folder / rel), map_location, policy=got.policy))
    elif pt2 in got.fetched.files:
        from safeload.mlflow._pt2 import read_weights

        # CPU tensors; load_state_dict copies them onto the devices of the module's own tensors.
        weights = read_weights(str(got.fetched.folder / pt2), where, got.policy)
    else:
        raise UnsupportedFormatError(
            f"{where}: the model has neither {rel} nor {pt2} (MLmodel flavors.pytorch.model_data)"
        )
    model.load_state_dict(weights, strict=strict)
    return model
