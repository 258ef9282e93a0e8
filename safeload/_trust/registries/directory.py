"""``kind = "directory"``: models laid out as ``<path>/<repo>/<files>`` on a local or mounted disk.

A directory has no history, so ``revision`` is optional (see :mod:`safeload.policy`); the files are
trusted only through their pinned hashes, checked while they are copied into the store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from safeload._trust.registries import Delivered, Registry
from safeload.errors import UntrustedSourceError
from safeload.policy import DirectoryRegistrySpec

__all__ = ["DirectoryRegistry"]


class DirectoryRegistry(Registry):
    kind = "directory"

    def __init__(self, spec: DirectoryRegistrySpec) -> None:
        self.name = spec.name
        self.root = spec.path

    def _repo_dir(self, repo: str) -> Path:
        path = self.root / repo
        if not path.is_dir():
            raise UntrustedSourceError(
                f"registry {self.name!r}: no folder {path} for repo {repo!r}; check [registries.{self.name}] "
                "path and the model's repo"
            )
        return path

    def deliver(
        self, repo: str, revision: str | None, files: Mapping[str, str | None], staging: Path
    ) -> Delivered:
        base = self._repo_dir(repo)
        paths: dict[str, Path] = {}
        for rel in files:
            path = base / rel
            if not path.is_file():
                raise UntrustedSourceError(
                    f"registry {self.name!r}: {repo}/{rel} does not exist under {self.root}"
                )
            paths[rel] = path
        return Delivered(paths=paths, private=False)

    def list_files(self, repo: str, revision: str | None) -> list[str]:
        base = self._repo_dir(repo)
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith("."):
                    out.append(Path(dirpath, name).relative_to(base).as_posix())
        return sorted(out)

    def resolve_revision(self, repo: str, ref: str | None) -> str | None:
        self._repo_dir(repo)
        return None
