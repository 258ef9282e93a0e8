"""Files written for people: a private temporary name beside the destination, then one ``rename``."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["create_beside"]

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_beside(path: Path, mode: int = 0o666) -> tuple[int, Path]:
    """A new, empty file next to ``path`` to be renamed onto it, opened read-write.

    It is created with ``mode`` minus the caller's umask (``0o666``: what ``open(path, "w")`` and ``cp``
    give), never through a symbolic link, and never over an existing file.

    Raises:
        OSError: the folder cannot be written.
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, _FLAGS, mode), tmp
        except FileExistsError:
            continue
