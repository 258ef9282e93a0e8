"""``safeload.patch()``: route third-party ``torch.load`` and ``from_pretrained`` calls through safeload.

For code that cannot change its imports (a library that calls ``torch.load`` or
``AutoModel.from_pretrained`` itself)::

    safeload.patch()            # stays until safeload.unpatch()
    with safeload.patch():      # or only for the block; the originals come back exactly on exit
        third_party.load_everything()

While patched, ``torch.load`` (and ``torch.serialization.load``) is ``safeload.load`` with torch's
signature, and ``from_pretrained`` of ``PreTrainedModel``, the ``Auto*`` classes, tokenizers, configs,
processors, image processors and feature extractors goes through ``safeload.transformers``, as does
``transformers.pipeline``. Patching replaces module and class attributes process-wide; it does not reach
a function someone bound earlier with ``from torch import load``. While transformers reads a model folder
(inside a patched ``from_pretrained``), ``torch.load`` refuses instead of going to the jail: nothing a
model folder holds should be unpickled at that point. Patch and unpatch from one thread, outside loads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["Patch", "patch", "unpatch"]

_lock = threading.RLock()
_saved: list[tuple[object, str, object]] = []
_depth = 0


def _torch_load(
    f: Any,
    map_location: Any = None,
    pickle_module: Any = None,
    *,
    weights_only: bool | None = None,
    mmap: bool | None = None,
    **pickle_load_args: Any,
) -> Any:
    """``torch.load`` routed through ``safeload.load``: the pickle is opened in the jail.

    ``pickle_module`` and extra unpickler arguments are ignored: the jail's unpickler is the only one.
    """
    from safeload.loader import load

    del pickle_module, pickle_load_args
    return load(f, map_location, weights_only=weights_only, mmap=mmap)


def _classmethod_patch(cls: type, raw: classmethod[Any, Any, Any]) -> classmethod[Any, Any, Any]:
    func = raw.__func__

    @functools.wraps(func)
    def from_pretrained(
        klass: type, pretrained_model_name_or_path: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        from safeload.transformers import from_pretrained as drop_in
        from safeload.transformers._guard import is_inside

        if is_inside():
            return func(klass, pretrained_model_name_or_path, *args, **kwargs)
        return drop_in(klass, pretrained_model_name_or_path, *args, **kwargs)

    del cls
    return classmethod(from_pretrained)


def _pipeline_patch(real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def pipeline(*args: Any, **kwargs: Any) -> Any:
        from safeload.transformers import _pipeline
        from safeload.transformers._guard import is_inside

        if is_inside():
            return real(*args, **kwargs)
        return _pipeline(real, *args, **kwargs)

    return pipeline


def _loader_classes() -> list[type]:
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    classes: list[type] = [
        transformers.PreTrainedModel,
        _BaseAutoModelClass,
        getattr(transformers, "PreTrainedConfig", None) or transformers.PretrainedConfig,
        transformers.PreTrainedTokenizerBase,
        transformers.ProcessorMixin,
        transformers.ImageProcessingMixin,
        transformers.FeatureExtractionMixin,
    ]
    for name in dir(transformers):
        if name.startswith("Auto") and not name.startswith("Autoformer"):
            obj = getattr(transformers, name, None)
            if isinstance(obj, type) and obj not in classes:
                classes.append(obj)
    return classes


def _targets() -> list[tuple[object, str, object]]:
    import torch
    import torch.serialization
    import transformers
    import transformers.pipelines

    out: list[tuple[object, str, object]] = [
        (torch, "load", _torch_load),
        (torch.serialization, "load", _torch_load),
    ]
    for cls in _loader_classes():
        raw = cls.__dict__.get("from_pretrained")
        if isinstance(raw, classmethod):
            out.append((cls, "from_pretrained", _classmethod_patch(cls, raw)))
    real_pipeline = transformers.pipelines.pipeline
    patched = _pipeline_patch(real_pipeline)
    out.append((transformers.pipelines, "pipeline", patched))
    out.append((transformers, "pipeline", patched))
    return out


def _install() -> None:
    for owner, name, replacement in _targets():
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        _saved.append((owner, name, original))
        setattr(owner, name, replacement)


def _restore() -> None:
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


class Patch:
    """The handle ``patch()`` returns; as a context manager it undoes its own ``patch()`` on exit."""

    def __enter__(self) -> Patch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _depth
        with _lock:
            if _depth == 0:
                return  # unpatch() already ran
            _depth -= 1
            if _depth == 0:
                _restore()


def patch() -> Patch:
    """Route ``torch.load`` and transformers' ``from_pretrained``/``pipeline`` through safeload.

    Call it alone to patch until :func:`unpatch`, or use it as ``with safeload.patch(): ...`` to restore
    the original objects (the very same objects) when the block ends. Nested uses are counted.

    Raises:
        Nothing itself; the patched functions raise what ``safeload.load`` and
        ``safeload.transformers`` raise.
    """
    global _depth
    with _lock:
        if _depth == 0:
            _install()
        _depth += 1
    return Patch()


def unpatch() -> None:
    """Put back every original ``patch()`` replaced, however many times it was applied."""
    global _depth
    with _lock:
        _depth = 0
        _restore()


def is_patched() -> bool:
    """Whether ``patch()`` is in effect."""
    return _depth > 0
