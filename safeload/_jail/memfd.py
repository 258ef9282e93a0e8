"""Sealed memory files: bytes a jail (or anyone holding the descriptor) can read and never change.

The seccomp program, a worker's job and a private copy of an artifact all travel this way: a memfd is
filled, then sealed against writes, growth and shrinking, and the seals themselves are sealed, so even a
process that inherits the descriptor with write access cannot alter what it reads.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

__all__ = ["memfd_of", "sealed_memfd"]

_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def sealed_memfd(name: str, fill: Callable[[int], None]) -> int:
    """A close-on-exec memfd filled by ``fill(fd)``, then sealed; the caller closes it.

    Raises:
        OSError: the kernel cannot create memfds, or ``fill`` failed.
    """
    fd = os.memfd_create(f"safeload-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        fill(fd)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def memfd_of(name: str, data: bytes) -> int:
    """A sealed memfd holding ``data``, positioned at its start."""

    def write(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)

    return sealed_memfd(name, write)
