"""scikit-learn models without unpickling in the host: pickles become skops inside the jail.

A pickle or joblib file is unpickled for real only inside the execute-mode jail (its own code runs there
and nowhere else), checked for functions, methods and lambdas (a ``FunctionTransformer`` with a ``func``),
and written there as a skops file. The host opens that file with ``skops.io.load``, trusting only the
types its caller names on top of skops's own safe set: what the file (or the worker) says should be
trusted is never consulted. A ``.skops`` input skips the jail and is loaded the same way.

skops and scikit-learn are the ``sklearn`` extra (``pip install safeload[sklearn]``); importing safeload
never imports them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeload._files import create_beside
from safeload._loading.loader import _copy_fd, _open_source
from safeload._loading.skops import convert_in_jail, is_skops, load_skops, skops_io
from safeload.errors import UnsupportedFormatError
from safeload.policy import Policy, load_policy

__all__ = ["load"]

@dataclass(frozen=True)
class Converted:
    """A pickle written as skops: where, and the types a loader will have to trust by name."""

    output: Path
    untrusted: tuple[str, ...]


def _trusted_names(trusted: Iterable[str]) -> list[str]:
    if isinstance(trusted, (str, bytes)) or not isinstance(trusted, Iterable):
        raise TypeError("trusted= is a list of type names, such as ['collections.Counter']")
    names = list(trusted)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"trusted= holds type names (str), not {type(bad[0]).__name__}")
    return names


def load(
    path: str | os.PathLike[str], trusted: Iterable[str] = (), *, policy: Policy | None = None
) -> Any:
    """A scikit-learn object from a pickle, joblib or skops file, without unpickling in this process.

    A pickle or joblib file is unpickled only inside the jail and converted there to skops; a skops file
    is read as it is. Either is then loaded with ``skops.io.load``, trusting skops's own safe types plus
    exactly the type names in ``trusted`` (``"collections.Counter"``).

    Raises:
        UnsafeContentError: the file holds types neither skops nor ``trusted`` trusts (named in the
            message), or (a pickle) a function, method, lambda or ``__main__`` class (the path to it named).
        UnsupportedFormatError: the file is neither a pickle skops can represent nor a skops file.
        MissingModuleError: skops or scikit-learn (or a module the pickle needs) is not installed.
        SandboxError: the jail failed (and its subclasses for timeouts and limits).
    """
    sio = skops_io()
    names = _trusted_names(trusted)
    pol = load_policy(policy)
    src, name = _open_source(path, pol)
    try:
        fd = os.dup(src) if is_skops(src) else convert_in_jail(src, pol)[0]
    finally:
        os.close(src)
    try:
        return load_skops(sio, fd, name, names, lambda missing: _untrusted_message(name, missing))
    finally:
        os.close(fd)


def _untrusted_message(name: str, missing: list[str]) -> str:
    listed = ", ".join(missing)
    return (
        f"{name} holds types that are not trusted: {listed}. Loading one runs its code; if you trust "
        f"them, name them: safeload.sklearn.load(path, trusted={missing!r})"
    )


def convert(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, policy: Policy | None = None
) -> Converted:
    """Write the scikit-learn pickle or joblib file ``src`` as the skops file ``dst``, converted in the jail.

    ``dst`` is written atomically, with the permissions the caller's umask gives a new file. The result
    names the types a loader will have to trust (``skops.io.load(dst, trusted=...)``).

    Raises:
        UnsafeContentError: the object holds a function, method, lambda or ``__main__`` class.
        UnsupportedFormatError, MissingModuleError, SandboxError: as :func:`load`.
    """
    pol = load_policy(policy)
    fd, name = _open_source(src, pol)
    try:
        if is_skops(fd):
            raise UnsupportedFormatError(f"{name} is already a skops file")
        out_fd, untrusted = convert_in_jail(fd, pol)
    finally:
        os.close(fd)
    target = Path(dst)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_fd, tmp = create_beside(target)
        try:
            try:
                _copy_fd(out_fd, tmp_fd, os.fstat(out_fd).st_size)
            finally:
                os.close(tmp_fd)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        os.close(out_fd)
    return Converted(target, untrusted)
