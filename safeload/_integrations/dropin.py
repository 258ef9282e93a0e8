"""The drop-in classes of ``safeload.transformers`` and ``safeload.diffusers``, made one way.

A drop-in is a subclass of the library's class with the same name whose ``from_pretrained`` goes through
safeload (the name resolved through ``trust.toml``, the files verified); ``isinstance`` checks, class
attributes and every other method stay the library's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["drop_in"]


def drop_in(cls: type, load: Callable[..., Any], *, module: str, library: str) -> type:
    """A subclass of ``cls``, named and documented as ``cls`` but living in ``module``, whose
    ``from_pretrained(name, *args, **kwargs)`` returns ``load(cls, name, *args, **kwargs)``.

    Its ``from_pretrained`` shows the original's signature and documentation, after a line naming
    ``module.from_pretrained`` (``library`` is how that line calls the original, e.g. ``transformers'``)
    for what it raises. A class without ``from_pretrained`` (a placeholder for a missing optional
    dependency, which raises when used) is returned as it is. Raises nothing itself.
    """
    try:
        original = inspect.getattr_static(cls, "from_pretrained")
    except AttributeError:
        return cls

    def from_pretrained(_cls: type, /, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        return load(cls, pretrained_model_name_or_path, *args, **kwargs)

    func = getattr(original, "__func__", original)
    from_pretrained.__doc__ = (
        f"Like {library} ``from_pretrained``, with the name resolved through ``trust.toml`` and the files "
        f"verified; see ``{module}.from_pretrained`` for what it raises.\n\n" + (func.__doc__ or "")
    )
    try:
        from_pretrained.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # pragma: no cover - a C-level function
        pass
    return type(
        cls.__name__,
        (cls,),
        {
            "from_pretrained": classmethod(from_pretrained),
            "__module__": module,
            "__doc__": cls.__doc__,
            "__qualname__": cls.__name__,
        },
    )
