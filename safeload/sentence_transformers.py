"""Drop-in for ``sentence_transformers.SentenceTransformer``: change one import, keep the code.

::

    from safeload.sentence_transformers import SentenceTransformer
    model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    embeddings = model.encode(["hello"])

The name resolves only through ``trust.toml`` (a bare name such as ``"all-MiniLM-L6-v2"`` is looked up as
``sentence-transformers/all-MiniLM-L6-v2`` too, as sentence-transformers itself does); the pinned files
are fetched and verified into the store, every ``pytorch_model.bin`` (the transformer's and those of
modules such as ``2_Dense/``) is converted to safetensors in the jail, and the real
``SentenceTransformer`` is built from the verified local folder with ``local_files_only=True``. While it
runs, every host unpickling entry point refuses, so no module's loader can unpickle a repository file
in this process. A local folder path works as for :mod:`safeload.transformers`.

``SentenceTransformer`` here is a subclass of the real one: ``encode``, ``save`` and the rest are the
library's own. sentence-transformers is an optional dependency (``safeload[sentence-transformers]``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sentence_transformers as _st

from safeload._integrations.folder import prepare
from safeload._integrations.guard import inside, refuse_host_unpickling
from safeload.policy import Policy, load_policy

__all__ = ["SentenceTransformer"]

# Hub arguments that mean nothing for a verified local folder.
_HUB_KWARGS = ("cache_folder", "token", "use_auth_token", "local_files_only")


def _policy_name(name: str, policy: Policy) -> str:
    if name not in policy.models and "/" not in name and not os.path.isdir(name):
        prefixed = f"sentence-transformers/{name}"
        if prefixed in policy.models:
            return prefixed
    return name


def build(
    init: Callable[..., None], model_name_or_path: str | os.PathLike[str] | None, *args: Any, **kwargs: Any
) -> None:
    """Run ``init`` (sentence-transformers' ``__init__``, bound to the instance) on the verified folder
    of ``model_name_or_path``, with host unpickling refused; what :class:`SentenceTransformer` does, also
    used by ``safeload.patch()`` for the library's own class."""
    if model_name_or_path is None:  # modules given in code: nothing is read from disk
        with refuse_host_unpickling(), inside():
            init(None, *args, **kwargs)
        return
    for key in _HUB_KWARGS:
        kwargs.pop(key, None)
    revision = kwargs.pop("revision", None)
    want_code = bool(kwargs.pop("trust_remote_code", False))
    policy = load_policy()
    name = _policy_name(os.fspath(model_name_or_path), policy)
    prepared = prepare(name, weights=True, trust_remote_code=want_code, revision=revision, policy=policy)
    kwargs.update(local_files_only=True, trust_remote_code=prepared.allow_code)
    with refuse_host_unpickling(), inside():
        init(str(Path(prepared.folder)), *args, **kwargs)


class SentenceTransformer(_st.SentenceTransformer):
    """``sentence_transformers.SentenceTransformer`` built only from a verified folder.

    Raises:
        UntrustedSourceError: the name is not pinned in the policy, the revision differs from the pin,
            or remote code is asked for and the policy does not allow it.
        UnsafeContentError: a module would unpickle a file in this process.
        IntegrityError, SignatureError: the files do not match their pins or signature.
        SandboxError, UnsupportedFormatError: converting pickle weights in the jail failed.
    """

    def __init__(
        self, model_name_or_path: str | os.PathLike[str] | None = None, *args: Any, **kwargs: Any
    ) -> None:
        build(super().__init__, model_name_or_path, *args, **kwargs)
