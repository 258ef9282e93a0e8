"""``safeload.Stub``: what an object becomes when the inert unpickler would not build it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stub"]


@dataclass(frozen=True, eq=False)
class Stub:
    """An object the checkpoint asked to build by calling ``module.name``; nothing was imported or called.

    ``args`` and ``kwargs`` are the call's arguments (``None`` when the global was only referenced, never
    called: then ``called`` is False), ``state`` is what the pickle would have passed to ``__setstate__``
    (for an ``nn.Module``, its ``__dict__`` with ``_parameters``, ``_buffers`` and ``_modules``), and
    ``listitems``/``dictitems`` are items the pickle appended to it. Every value inside is plain data,
    a tensor, an array or another ``Stub``. Stubs compare by identity, so they can be dictionary keys.
    """

    module: str
    name: str
    called: bool = True
    args: tuple[Any, ...] | None = None
    kwargs: dict[Any, Any] | None = None
    state: Any = None
    listitems: list[Any] = field(default_factory=list)
    dictitems: dict[Any, Any] = field(default_factory=dict)

    @property
    def qualname(self) -> str:
        """``module.name`` of the global the checkpoint referenced."""
        return f"{self.module}.{self.name}" if self.module else self.name

    def __repr__(self) -> str:
        kind = "" if self.called else ", not called"
        return f"Stub({self.qualname}{kind})"
