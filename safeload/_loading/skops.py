"""scikit-learn objects without unpickling in the host: pickles become skops in the jail, skops loads by name.

A pickle or joblib file is unpickled for real only inside the execute-mode jail, checked there for
functions, methods and lambdas, and written there as a skops file (:func:`convert_in_jail`). The host
opens skops files with ``skops.io.load``, trusting skops's own safe types plus exactly the names its
caller gives (:func:`load_skops`): what a file, a worker or a model's metadata says should be trusted is
never consulted. :mod:`safeload.sklearn` and :mod:`safeload.mlflow.sklearn` are built on these.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Callable
from typing import Any

from safeload._jail.launcher import run_worker
from safeload._loading.loader import _open_output, _output_dir, _read_fd, _sandbox_limits, _worker_error
from safeload.errors import MissingModuleError, SandboxError, UnsafeContentError, UnsupportedFormatError
from safeload.policy import Policy

__all__ = ["convert_in_jail", "is_skops", "load_skops", "skops_io", "untrusted_types"]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_RESULT_CAP = 1 << 20
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,300}")


def skops_io() -> Any:
    """``skops.io``, imported on first use (importing safeload never imports it).

    Raises:
        MissingModuleError: skops (or scikit-learn) is not installed.
    """
    try:
        import skops.io as sio
    except ImportError as exc:
        raise MissingModuleError(
            "loading scikit-learn models needs skops and scikit-learn; install them with "
            "pip install 'safeload[sklearn]'",
            name="skops",
        ) from exc
    return sio


def is_skops(fd: int) -> bool:
    """Whether the file open at ``fd`` starts like a skops file (a zip archive)."""
    return os.pread(fd, 4, 0) in _ZIP_MAGIC


def convert_in_jail(fd: int, policy: Policy) -> tuple[int, tuple[str, ...]]:
    """Run the skops worker on the pickle open at ``fd``: a descriptor for the skops file it wrote and the
    types it reports as untrusted (advice for messages; the host decides what is trusted).

    Raises:
        UnsafeContentError: the object holds a function, method, lambda or ``__main__`` class.
        UnsupportedFormatError: not a pickle skops can represent.
        MissingModuleError: a module the pickle needs is not installed.
        SandboxError: the jail failed, or its result is malformed.
    """
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


def untrusted_types(sio: Any, fd: int, name: str) -> list[str]:
    """The types the skops file open at ``fd`` holds beyond skops's safe set, read from its schema
    (nothing is built).

    Raises:
        UnsupportedFormatError: not a readable skops file.
    """
    try:
        return sorted({str(t) for t in sio.get_untrusted_types(file=f"/proc/self/fd/{fd}")})
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UnsupportedFormatError(f"{name} is not a readable skops file: {exc}") from None


def load_skops(
    sio: Any, fd: int, name: str, trusted: list[str], refusal: Callable[[list[str]], str]
) -> Any:
    """The object in the skops file open at ``fd``, trusting skops's safe types plus exactly ``trusted``.

    ``refusal`` words the message for the untrusted types found (the caller knows where trust is given).

    Raises:
        UnsafeContentError: the file holds types outside that set.
        UnsupportedFormatError: the file cannot be read as skops.
    """
    missing = sorted(set(untrusted_types(sio, fd, name)) - set(trusted))
    if missing:
        raise UnsafeContentError(refusal(missing))
    try:
        return sio.load(f"/proc/self/fd/{fd}", trusted=trusted or None)
    except sio.UntrustedTypesFoundException as exc:
        raise UnsafeContentError(f"{name}: {exc}") from None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, AttributeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise UnsupportedFormatError(f"{name} could not be read as skops: {why}") from None
