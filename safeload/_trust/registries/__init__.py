"""Registries: where a pinned model's bytes come from.

A registry only delivers bytes into a staging folder; it never decides whether they are trusted. The
caller (``safeload._trust.resolve``) hashes every file into the store and compares it with the pins. Adding a
registry kind (OCI, S3...) means one more module implementing :class:`Registry` and one more branch in
:func:`open_registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from safeload._jail.launcher import Tier
from safeload.policy import (
    DirectoryRegistrySpec,
    HuggingFaceRegistrySpec,
    MlflowRegistrySpec,
    OciRegistrySpec,
    RegistrySpec,
)

__all__ = ["Delivered", "Registry", "open_registry"]


@dataclass(frozen=True)
class Delivered:
    """Files a registry made available: repo-relative path -> local path.

    ``private`` is True when the paths live in the caller's own staging folder (downloads), so the store
    may hash them in place; False when they are someone else's files (a directory registry) and must be
    copied while hashed.
    """

    paths: Mapping[str, Path]
    private: bool


class Registry(Protocol):
    """What ``resolve`` and ``pinning`` need from a source of models."""

    name: str
    kind: str

    def deliver(
        self, repo: str, revision: str | None, files: Mapping[str, str | None], staging: Path
    ) -> Delivered:
        """Make ``files`` of ``repo`` at ``revision`` readable locally, all at once.

        ``files`` maps each relative path to its pinned digest, or None where no pin is known: a
        registry that can tell early that bytes would not match (a Hub's LFS etag) refuses them before
        downloading; the store's hashing is what decides either way.

        Raises:
            UntrustedSourceError: the repo, revision or a file does not exist in this registry.
            IntegrityError: the registry's answers break a rule (see the registry's module).
        """
        ...

    def list_files(self, repo: str, revision: str | None) -> list[str]:
        """Every file path in ``repo`` at ``revision`` (used by pinning and audit-mode resolution)."""
        ...

    def resolve_revision(self, repo: str, ref: str | None) -> str | None:
        """The commit id ``ref`` (a branch, tag or None for the default branch) points at right now."""
        ...


def open_registry(spec: RegistrySpec, *, jail: Tier = "landlock") -> Registry:
    """The registry client for a ``[registries.NAME]`` table; ``jail`` is the weakest jail tier its
    downloads may run in (``[sandbox] weakest_jail``)."""
    if isinstance(spec, HuggingFaceRegistrySpec):
        from safeload._trust.registries.huggingface import HuggingFaceRegistry

        return HuggingFaceRegistry(spec, jail=jail)
    if isinstance(spec, DirectoryRegistrySpec):
        from safeload._trust.registries.directory import DirectoryRegistry

        return DirectoryRegistry(spec)
    if isinstance(spec, OciRegistrySpec):
        from safeload._trust.registries.oci import OciRegistry

        return OciRegistry(spec, jail=jail)
    if isinstance(spec, MlflowRegistrySpec):
        from safeload._trust.registries.mlflow import MlflowRegistry

        return MlflowRegistry(spec, jail=jail)
    raise AssertionError(f"unknown registry spec {spec!r}")
