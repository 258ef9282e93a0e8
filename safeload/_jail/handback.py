"""What the host-side wrappers of a jailed worker share: the job handed in, the files taken back.

A job is JSON in a sealed memfd the jail inherits (it can read it, never change it). Every file the worker
leaves is opened with ``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file with one link within its cap
(a planted symlink, FIFO or hard link is refused before a byte is read); its error report is read the same
way, and only printable text from it reaches a message.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

from safeload.errors import SandboxError

from .memfd import memfd_of

__all__ = ["open_output", "printable", "sealed_job", "worker_error"]

_ERROR_CAP = 64 << 10


def sealed_job(job: dict[str, object], name: str) -> int:
    """``job`` as JSON in a sealed memfd at offset 0 (close-on-exec; hand it over with pass_fds)."""
    return memfd_of(f"{name}-job", json.dumps(job).encode())


def open_output(path: Path, cap: int, worker: str) -> int:
    """A read-only descriptor on the ``worker``'s output ``path``: a plain file of at most ``cap`` bytes.

    Raises:
        SandboxError: it cannot be opened, or is a link, a FIFO, a device, hard-linked or too large.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SandboxError(f"the {worker} worker's output {path.name} cannot be opened: {exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > cap:
        os.close(fd)
        raise SandboxError(f"the {worker} worker's output {path.name} is not a plain file within its cap")
    return fd


def worker_error(output_dir: Path, stderr: str, worker: str) -> str:
    """The message of the worker's ``error.json``, else the tail of its standard error, printable."""
    with contextlib.suppress(SandboxError, OSError, ValueError):
        fd = open_output(output_dir / "error.json", _ERROR_CAP, worker)
        with os.fdopen(fd, "rb") as fh:
            return printable(str(json.loads(fh.read()).get("message", "")))
    return printable(stderr[-2000:]) or "no error report"


def printable(text: str) -> str:
    """``text`` with every unprintable character replaced, at most 2000 characters."""
    return "".join(c if c.isprintable() else "?" for c in text)[:2000]
