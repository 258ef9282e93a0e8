"""Drop-in for ``peft.PeftModel``: apply an adapter that is its own ``[models]`` entry.

::

    from safeload.transformers import AutoModelForCausalLM
    from safeload.peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained("acme/base")
    model = PeftModel.from_pretrained(base, "acme/base-lora")

The adapter name resolves only through ``trust.toml``; its files are fetched and verified into the store,
an ``adapter_model.bin`` is converted to safetensors in the jail, and the real
``peft.PeftModel.from_pretrained`` runs on the verified folder while host unpickling refuses. The base
model an adapter names in ``adapter_config.json`` (``base_model_name_or_path``) must be a ``[models]``
entry too: an adapter built for a model the policy does not know is refused, because it says the
adapter was reviewed against something else. The base model itself is whatever you pass, loaded through
:mod:`safeload.transformers`. peft is an optional dependency (``safeload[peft]``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import peft as _peft
import torch

from safeload._integrations.folder import prepare
from safeload._integrations.guard import inside, refuse_host_unpickling
from safeload.errors import UntrustedSourceError
from safeload.policy import load_policy

__all__ = ["PeftModel"]

_HUB_KWARGS = ("cache_dir", "force_download", "token", "use_auth_token", "local_files_only")
_CONFIG_CAP = 1 << 20


def from_pretrained(
    cls: type[_peft.PeftModel],
    model: torch.nn.Module,
    model_id: str | os.PathLike[str],
    adapter_name: str = "default",
    is_trainable: bool = False,
    config: Any = None,
    **kwargs: Any,
) -> _peft.PeftModel:
    """Apply the pinned adapter ``model_id`` to ``model`` with ``cls.from_pretrained`` (a peft class),
    run on the verified adapter folder; what :meth:`PeftModel.from_pretrained` does, also used by
    ``safeload.patch()`` for peft's own class.

    Raises:
        UntrustedSourceError: the adapter is not pinned, its revision differs from the pin, or its
            ``adapter_config.json`` names a base model that is not a ``[models]`` entry.
        UnsafeContentError: loading would unpickle a file in this process.
        IntegrityError, SignatureError: the files do not match their pins or signature.
        SandboxError, UnsupportedFormatError: converting ``adapter_model.bin`` in the jail failed.
    """
    for key in _HUB_KWARGS:
        kwargs.pop(key, None)
    revision = kwargs.pop("revision", None)
    subfolder = os.fspath(kwargs.get("subfolder") or "")
    if os.path.isabs(subfolder) or ".." in subfolder.replace("\\", "/").split("/"):
        raise UntrustedSourceError(f"subfolder={subfolder!r} must be a relative path inside the adapter")
    policy = load_policy()
    name = os.fspath(model_id)
    prepared = prepare(
        name, weights=True, trust_remote_code=False, revision=revision, policy=policy, adapter=True
    )
    adapter_config = prepared.folder / subfolder / "adapter_config.json"
    try:
        with open(adapter_config, "rb") as fh:
            data = json.loads(fh.read(_CONFIG_CAP))
    except (OSError, ValueError) as exc:
        raise UntrustedSourceError(
            f"{name}: no readable adapter_config.json among its pinned files ({exc}); pin it with "
            "`safeload pin`"
        ) from None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    if base and base not in policy.models:
        raise UntrustedSourceError(
            f"{name}: adapter_config.json says the adapter was made for {base!r}, which is not a "
            f"[models] entry of {policy.source or 'the policy'}; pin that base model too (and load it "
            "through safeload.transformers), or set base_model_name_or_path to the pinned name"
        )
    with refuse_host_unpickling(), inside():
        return cls.from_pretrained(model, str(prepared.folder), adapter_name, is_trainable, config, **kwargs)


class PeftModel(_peft.PeftModel):
    """``peft.PeftModel`` whose ``from_pretrained`` reads only a verified adapter folder."""

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model: torch.nn.Module,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: Any = None,
        **kwargs: Any,
    ) -> _peft.PeftModel:
        """Apply the pinned adapter ``model_id`` to ``model`` (peft's own signature).

        Raises:
            UntrustedSourceError: the adapter is not pinned, its revision differs from the pin, or its
                ``adapter_config.json`` names a base model that is not a ``[models]`` entry.
            UnsafeContentError: loading would unpickle a file in this process.
            IntegrityError, SignatureError: the files do not match their pins or signature.
            SandboxError, UnsupportedFormatError: converting ``adapter_model.bin`` in the jail failed.
        """
        return from_pretrained(_peft.PeftModel, model, model_id, adapter_name, is_trainable, config, **kwargs)
