"""``--mode skops``: a scikit-learn pickle or joblib file, unpickled for real here and written as skops.

Runs only inside the execute-mode jail (site-packages bound read-only). The file's own code runs while it
is unpickled, in this process; what leaves the jail is ``/out/model.skops``, which the host opens with
``skops.io.load`` and only the types its caller trusts, so nothing the file's code did here can make the
host run code. An object that holds a function, a method, a lambda or a class defined in ``__main__``
anywhere in its state is refused before anything is written (skops would write a reference to the function,
and the host would then call it): ``kind: unsafe`` in ``error.json``, naming the path to it.

On success ``/out/result.json`` is ``{"version": 1, "untrusted": [...]}``: the types
``skops.io.get_untrusted_types`` reports for the file written, which a loader has to trust by name.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ._common import write_error, write_json

__all__ = ["main"]

_OUTPUT = "model.skops"
_RESULT = "result.json"
# Objects walked and the depth followed before the object is refused as a bomb.
_MAX_NODES = 5_000_000
_MAX_DEPTH = 400
_JOBLIB_MARK = b"joblib.numpy_pickle"


class Refused(Exception):
    """The object holds code: a function, a method, a lambda or a ``__main__`` class."""


class _TooBig(Exception):
    pass


def _unpickle(src: str) -> Any:
    """The object, with joblib's loader when the file is joblib's and joblib is installed, else pickle's."""
    from ._common import open_input

    with os.fdopen(open_input(src), "rb") as fh:
        head = fh.read(1 << 20)
        fh.seek(0)
        if _JOBLIB_MARK in head:
            try:
                import joblib  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                pass
            else:
                return joblib.load(fh)
        import pickle

        return pickle.load(fh)


def _code_kinds() -> tuple[type, ...]:
    import functools
    import types

    kinds: list[type] = [
        types.FunctionType, types.LambdaType, types.MethodType, types.BuiltinFunctionType,
        types.BuiltinMethodType, types.MethodWrapperType, types.WrapperDescriptorType,
        types.MethodDescriptorType, types.ClassMethodDescriptorType, types.CodeType, functools.partial,
        staticmethod, classmethod, property,
    ]
    try:
        import numpy

        kinds.append(numpy.ufunc)
    except ImportError:
        pass
    return tuple(kinds)


def _children(obj: Any) -> list[tuple[str, Any]]:
    """(path step, value) of what ``obj`` holds: items, attributes, slots, object-array elements."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in list(dict.items(obj)):
            out.append((f"[{k!r}]"[:80] + " (key)", k))
            out.append((f"[{k!r}]"[:80], v))
    elif isinstance(obj, (list, tuple)):
        out.extend((f"[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, (set, frozenset)):
        out.extend(("{...}", v) for v in obj)
    module = type(obj).__module__ or ""
    if module == "numpy" and getattr(obj, "dtype", None) is not None:
        if getattr(obj.dtype, "hasobject", False):
            out.extend((f"[{i}]", v) for i, v in enumerate(obj.reshape(-1).tolist()))
        return out
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        attrs = None
    if isinstance(attrs, dict):
        out.extend((f".{k}", v) for k, v in list(attrs.items()))
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots if isinstance(slots, (tuple, list)) else ():
            if isinstance(slot, str) and slot not in ("__dict__", "__weakref__"):
                try:
                    out.append((f".{slot}", object.__getattribute__(obj, slot)))
                except AttributeError:
                    continue
    return out


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return f"{type(obj).__name__} {module}.{name}"[:200]


def check(root: Any) -> None:
    """Raise :class:`Refused` naming the path to the first function, method, lambda, ``__main__`` class
    or ``FunctionTransformer`` with a function anywhere in ``root``."""
    code = _code_kinds()
    plain = (str, bytes, bytearray, int, float, complex, bool, type(None))
    seen: set[int] = set()
    keep: list[Any] = []
    stack: list[tuple[str, Any, int]] = [("model", root, 0)]
    while stack:
        path, obj, depth = stack.pop()
        if isinstance(obj, plain) or id(obj) in seen:
            continue
        seen.add(id(obj))
        keep.append(obj)
        if len(seen) > _MAX_NODES or depth > _MAX_DEPTH:
            raise _TooBig(f"the object holds more than {_MAX_NODES} objects or nests deeper than "
                          f"{_MAX_DEPTH}")
        if isinstance(obj, code):
            raise Refused(f"{path} is a function or method ({_describe(obj)}); skops would store a "
                          "reference to it and the loader would call it")
        kind = obj if isinstance(obj, type) else type(obj)
        if kind.__module__ == "__main__":
            raise Refused(f"{path} is {_describe(obj)}, defined in the script that saved it (__main__); "
                          "no loader can rebuild it without that script's code")
        if type(obj).__name__ == "FunctionTransformer" and type(obj).__module__.startswith("sklearn."):
            for attr in ("func", "inverse_func"):
                if getattr(obj, attr, None) is not None:
                    raise Refused(f"{path} is a FunctionTransformer whose {attr} is "
                                  f"{_describe(getattr(obj, attr))}: a function runs when it transforms")
        if isinstance(obj, type):
            continue
        stack.extend((path + step, child, depth + 1) for step, child in reversed(_children(obj)))


def _without_procfs() -> None:
    """Let threadpoolctl (imported by scikit-learn) list libraries where ``/proc`` cannot be read.

    The landlock tier grants no access to ``/proc``; threadpoolctl reads ``/proc/self/maps`` when it
    exists and would fail scikit-learn's import. ``dl_iterate_phdr`` gives it the same list without it.
    """
    try:
        with open("/proc/self/maps", "rb"):
            return
    except OSError:
        pass
    try:
        import threadpoolctl
    except ImportError:
        return
    threadpoolctl._HAS_PROCFS = False


def convert(src: str, out_dir: str) -> int:
    _without_procfs()
    try:
        import skops.io as sio
    except ImportError as exc:
        return write_error(out_dir, "module", f"skops is not installed in this environment: {exc}",
                           module=getattr(exc, "name", None) or "skops")
    try:
        obj = _unpickle(src)
    except MemoryError:
        return write_error(out_dir, "limit", "the file ran out of memory while it was unpickled")
    except RecursionError:
        return write_error(out_dir, "limit", "the file is nested too deeply to unpickle")
    except BaseException as exc:  # the file's own code may raise anything
        from .execute import _missing_module

        missing = _missing_module(exc)
        if missing is not None:
            why = f"unpickling raised {type(exc).__name__}: {exc}"
            return write_error(out_dir, "module", why, module=missing[:200])
        return write_error(out_dir, "format", f"unpickling the file raised {type(exc).__name__}: {exc}")
    try:
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
        check(obj)
    except Refused as exc:
        why = f"the object holds code, so it cannot be converted to skops: {exc}"
        return write_error(out_dir, "unsafe", why)
    except (_TooBig, MemoryError, RecursionError) as exc:
        return write_error(out_dir, "limit", str(exc) or type(exc).__name__)
    target = os.path.join(out_dir, _OUTPUT)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(target, flags, 0o644), "wb") as fh:
            sio.dump(obj, fh)
        untrusted = sio.get_untrusted_types(file=target)
    except (MemoryError, RecursionError) as exc:
        why = f"writing the skops file exceeded a budget: {type(exc).__name__}"
        return write_error(out_dir, "limit", why)
    except BaseException as exc:  # skops refuses types it cannot represent with its own exceptions
        return write_error(out_dir, "format", f"skops cannot write this object: {type(exc).__name__}: {exc}")
    write_json(out_dir, _RESULT, {"version": 1, "untrusted": [str(t) for t in untrusted]})
    return 0


def main(src: str, out_dir: str) -> int:
    """Convert the pickle at ``src`` into ``out_dir``; returns the exit status, never raises."""
    try:
        return convert(src, out_dir)
    except BaseException as exc:  # a tampered process may fail anywhere
        return write_error(out_dir, "crash", f"{type(exc).__name__}: {exc}")
