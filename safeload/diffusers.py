"""Drop-in for diffusers' pipelines and model classes: change one import, keep the code.

::

    from safeload.diffusers import DiffusionPipeline, UNet2DConditionModel
    pipe = DiffusionPipeline.from_pretrained("acme/tiny-sd")
    unet = UNet2DConditionModel.from_pretrained("acme/tiny-sd", subfolder="unet")

The name resolves only through ``trust.toml``; every component folder comes from that one entry's
verified files, every ``diffusion_pytorch_model*.bin`` and ``pytorch_model*.bin`` (a text encoder's) is
converted to safetensors in the jail, and the real diffusers ``from_pretrained`` runs on the verified
folder with ``local_files_only=True`` and ``use_safetensors=True`` while host unpickling refuses. A
``model_index.json`` that names a component from a library other than diffusers or transformers, or a
pipeline class diffusers does not have, would load code from the repository: it is refused, as are
``custom_pipeline`` and ``trust_remote_code``.

Every class diffusers exports with a ``from_pretrained`` is here under the same name, a subclass whose
``from_pretrained`` returns diffusers' own object. diffusers is an optional dependency
(``safeload[diffusers]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import diffusers as _df

from safeload._integrations.dropin import drop_in
from safeload._integrations.folder import prepare
from safeload._integrations.guard import inside, refuse_host_unpickling
from safeload.errors import UntrustedSourceError
from safeload.policy import load_policy

__all__ = ["DiffusionPipeline"]

_HUB_KWARGS = ("cache_dir", "force_download", "token", "use_auth_token", "local_files_only", "proxies")
_CODE_KWARGS = ("custom_pipeline", "custom_revision", "trust_remote_code")
_LIBRARIES = frozenset({"diffusers", "transformers"})
_INDEX_CAP = 1 << 20


def _check_model_index(folder: Path, name: str) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        return
    try:
        with open(index, "rb") as fh:
            data = json.loads(fh.read(_INDEX_CAP))
    except (OSError, ValueError) as exc:
        raise UntrustedSourceError(f"{name}: model_index.json is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UntrustedSourceError(f"{name}: model_index.json is not an object")
    pipeline = data.get("_class_name")
    if not isinstance(pipeline, str) or not hasattr(_df, pipeline):
        raise UntrustedSourceError(
            f"{name}: model_index.json names the pipeline {pipeline!r}, which diffusers does not have; "
            "diffusers would load its code from the repository, and safeload does not run repository code"
        )
    for component, value in data.items():
        # Components are [library, class] pairs; other keys are pipeline options (requires_safety_checker).
        if component.startswith("_") or not isinstance(value, list) or value == [None, None]:
            continue
        library = value[0] if len(value) == 2 else None
        if library not in _LIBRARIES:
            raise UntrustedSourceError(
                f"{name}: model_index.json loads {component!r} from {library!r}; only diffusers and "
                "transformers components are loaded (anything else is code from the repository)"
            )


def from_pretrained(cls: Any, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Run ``cls.from_pretrained`` (a diffusers class) on the verified folder of a name or path.

    Raises:
        UntrustedSourceError: the name is not pinned, the revision differs from the pin, remote code is
            asked for, or ``model_index.json`` would load code from the repository.
        UnsafeContentError: loading would unpickle a file in this process.
        IntegrityError, SignatureError: the files do not match their pins or signature.
        SandboxError, UnsupportedFormatError: converting pickle weights in the jail failed.
    """
    name = os.fspath(pretrained_model_name_or_path)
    for key in _CODE_KWARGS:
        if kwargs.pop(key, None):
            raise UntrustedSourceError(
                f"{name}: {key}= loads code from outside the pinned files; safeload does not run it"
            )
    for key in _HUB_KWARGS:
        kwargs.pop(key, None)
    subfolder = os.fspath(kwargs.get("subfolder") or "")
    if os.path.isabs(subfolder) or ".." in subfolder.replace("\\", "/").split("/"):
        raise UntrustedSourceError(f"subfolder={subfolder!r} must be a relative path inside the model folder")
    revision = kwargs.pop("revision", None)
    prepared = prepare(name, weights=True, trust_remote_code=False, revision=revision, policy=load_policy())
    _check_model_index(prepared.folder, name)
    kwargs.update(local_files_only=True, use_safetensors=True)
    with refuse_host_unpickling(), inside():
        return cls.from_pretrained(str(prepared.folder), **kwargs)


def _wrap(cls: type) -> type:
    return drop_in(cls, from_pretrained, module=__name__, library="diffusers'")


DiffusionPipeline = _wrap(_df.DiffusionPipeline)
_wrapped: dict[str, type] = {"DiffusionPipeline": DiffusionPipeline}


def __getattr__(name: str) -> Any:
    """Any diffusers class with ``from_pretrained`` (pipelines, models, schedulers), wrapped once."""
    if name in _wrapped:
        return _wrapped[name]
    real = getattr(_df, name, None)
    if isinstance(real, type) and hasattr(real, "from_pretrained"):
        _wrapped[name] = _wrap(real)
        return _wrapped[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
