"""Host-side guards that hold while transformers reads a model folder.

``refuse_host_unpickling()`` replaces every unpickling entry point transformers (or a library it calls)
could reach in this process with a refusal, so that a code path nobody foresaw (a redirected weight
file, an adapter, a pickled tokenizer or processor file, ``training_args.bin``) fails with
``UnsafeContentError`` instead of running a stranger's pickle. The originals are put back on exit,
exactly the objects that were there on entry.

``inside()`` marks the current thread as already inside a safeload load, so patched transformers entry
points (see ``safeload._patching``) call straight through instead of resolving a second time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from safeload.errors import UnsafeContentError

__all__ = ["inside", "is_inside", "refuse_host_unpickling"]

_lock = threading.RLock()
_depth = 0
_saved: list[tuple[object, str, object]] = []
_local = threading.local()


def _refusal(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        target = args[0] if args else kwargs.get("f") or kwargs.get("checkpoint_file")
        on = f" (on {target!r})" if isinstance(target, str | bytes) or hasattr(target, "__fspath__") else ""
        raise UnsafeContentError(
            f"{what} was called in this process while transformers was loading a model{on}; "
            "safeload never unpickles a model file in the host. Convert the file to safetensors "
            "(`safeload convert FILE -o model.safetensors`) or remove it from the model folder."
        )

    refuse.__name__ = f"refused_{what.replace('.', '_')}"
    return refuse


def _numpy_load(real: Callable[..., Any]) -> Callable[..., Any]:
    def load(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("allow_pickle"):
            _refusal("numpy.load(allow_pickle=True)")(*args)
        return real(*args, **kwargs)

    return load


def _load_state_dict(real: Callable[..., Any]) -> Callable[..., Any]:
    def load_state_dict(checkpoint_file: Any, *args: Any, **kwargs: Any) -> Any:
        import os

        if not os.fspath(checkpoint_file).endswith(".safetensors"):
            _refusal("transformers.modeling_utils.load_state_dict")(os.fspath(checkpoint_file))
        return real(checkpoint_file, *args, **kwargs)

    return load_state_dict


def _targets() -> list[tuple[object, str, object]]:
    import _pickle
    import pickle

    import numpy
    import torch
    import torch.jit
    import torch.serialization

    out: list[tuple[object, str, object]] = []
    for mod in (pickle, _pickle):
        for name in ("load", "loads"):
            out.append((mod, name, _refusal(f"{mod.__name__}.{name}")))
    out.append((torch, "load", _refusal("torch.load")))
    out.append((torch.serialization, "load", _refusal("torch.serialization.load")))
    out.append((torch.jit, "load", _refusal("torch.jit.load")))
    out.append((numpy, "load", _numpy_load(numpy.load)))
    joblib = sys.modules.get("joblib")
    if joblib is not None:
        out.append((joblib, "load", _refusal("joblib.load")))
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    if modeling_utils is not None:
        out.append((modeling_utils, "load_state_dict", _load_state_dict(modeling_utils.load_state_dict)))
    return out


@contextmanager
def refuse_host_unpickling() -> Iterator[None]:
    """Make host unpickling raise ``UnsafeContentError`` for the duration of the block (re-entrant).

    Raises:
        UnsafeContentError: from inside the block, when anything tries to unpickle in this process.
    """
    global _depth
    with _lock:
        if _depth == 0:
            # Import transformers' loader first so its module attribute is in place to be replaced.
            import transformers.modeling_utils  # noqa: F401

            for owner, name, replacement in _targets():
                _saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, replacement)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                while _saved:
                    owner, name, original = _saved.pop()
                    setattr(owner, name, original)


def is_inside() -> bool:
    """Whether this thread is already inside a safeload transformers load."""
    return bool(getattr(_local, "depth", 0))


@contextmanager
def inside() -> Iterator[None]:
    """Mark this thread as inside a safeload load for the duration of the block."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
