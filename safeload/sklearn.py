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

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeload.errors import MissingModuleError, SandboxError, UnsafeContentError, UnsupportedFormatError
from safeload.policy import Policy, load_policy

__all__ = ["load"]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_RESULT_CAP = 1 << 20
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,300}")


@dataclass(frozen=True)
class Converted:
    """A pickle written as skops: where, and the types a loader will have to trust by name."""

    output: Path
    untrusted: tuple[str, ...]


def _skops_io() -> Any:
    try:
        import skops.io as sio
    except ImportError as exc:
        raise MissingModuleError(
            "safeload.sklearn needs skops and scikit-learn; install them with "
            "pip install 'safeload[sklearn]'",
            name="skops",
        ) from exc
    return sio


def _trusted_names(trusted: Iterable[str]) -> list[str]:
    if isinstance(trusted, (str, bytes)) or not isinstance(trusted, Iterable):
        raise TypeError("trusted= is a list of type names, such as ['collections.Counter']")
    names = list(trusted)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"trusted= holds type names (str), not {type(bad[0]).__name__}")
    return names


def _convert_in_jail(fd: int, policy: Policy) -> tuple[int, tuple[str, ...]]:
    """Run the skops worker on the pickle open at ``fd``: a descriptor for the skops file it wrote and the
    types it reports as untrusted (advice for messages; the host decides what is trusted)."""
    from safeload._jail.launcher import run_worker
    from safeload._loading.loader import _open_output, _output_dir, _read_fd, _sandbox_limits, _worker_error

    limits = _sandbox_limits(policy)
    with _output_dir() as (out, dir_fd):
        run = run_worker(fd, out, mode="skops", limits=limits)
        if run.returncode != 0:
            raise _worker_error(dir_fd, run.returncode, run.stderr)
        rfd = _open_output(dir_fd, "result.json", _RESULT_CAP)
        if rfd is None:
            raise SandboxError("the sandboxed worker exited without writing its result")
        try:
            doc = json.loads(_read_fd(rfd))
        except (ValueError, RecursionError):
            doc = None
        listed = doc.get("untrusted") if isinstance(doc, dict) else None
        if not isinstance(listed, list) or not all(
            isinstance(t, str) and _TYPE_NAME.fullmatch(t) for t in listed
        ):
            raise SandboxError("the sandboxed worker's result.json is malformed")
        skops_fd = _open_output(dir_fd, "model.skops", limits.max_output_bytes)
        if skops_fd is None:
            raise SandboxError("the sandboxed worker exited without writing the skops file")
    return skops_fd, tuple(listed)


def _is_skops(fd: int) -> bool:
    return os.pread(fd, 4, 0) in _ZIP_MAGIC


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
    from safeload._loading.loader import _open_source

    sio = _skops_io()
    names = _trusted_names(trusted)
    pol = load_policy(policy)
    src, name = _open_source(path, pol)
    try:
        if _is_skops(src):
            fd = os.dup(src)
        else:
            fd, _ = _convert_in_jail(src, pol)
    finally:
        os.close(src)
    try:
        return _load_skops(sio, fd, name, names)
    finally:
        os.close(fd)


def _load_skops(sio: Any, fd: int, name: str, trusted: list[str]) -> Any:
    import zipfile

    where = f"/proc/self/fd/{fd}"
    try:
        untrusted = [str(t) for t in sio.get_untrusted_types(file=where)]
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UnsupportedFormatError(f"{name} is not a readable skops file: {exc}") from None
    missing = sorted(set(untrusted) - set(trusted))
    if missing:
        raise UnsafeContentError(_untrusted_message(name, missing))
    try:
        return sio.load(where, trusted=trusted or None)
    except sio.UntrustedTypesFoundException as exc:
        raise UnsafeContentError(f"{name}: {exc}") from None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise UnsupportedFormatError(f"{name} could not be read as skops: {why}") from None


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
    from safeload._files import create_beside
    from safeload._loading.loader import _copy_fd, _open_source

    pol = load_policy(policy)
    fd, name = _open_source(src, pol)
    try:
        if _is_skops(fd):
            raise UnsupportedFormatError(f"{name} is already a skops file")
        out_fd, untrusted = _convert_in_jail(fd, pol)
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
