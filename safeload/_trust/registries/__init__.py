"""Registries: where a pinned model's bytes come from.

A registry only delivers bytes into a staging folder; it never decides whether they are trusted. The
caller (``safeload._trust.resolve``) hashes every file into the store and compares it with the pins. Adding a
registry kind (OCI, S3...) means one more module with a subclass of :class:`Registry` and one more branch in
:func:`open_registry`.

Besides delivering, listing and resolving, a registry may offer three capabilities; a kind that has
nothing to offer inherits the protocol's defaults by subclassing it: :meth:`Registry.bind` (check the
registry's view of a version against the entry before a cold fetch; default: nothing to check),
:meth:`Registry.declared_digests` (the digests the registry claims for files; default: none) and
:meth:`Registry.attached_bom` (a BOM attached to a revision; default: none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from safeload._jail.launcher import Tier
from safeload.policy import (
    DirectoryRegistrySpec,
    HuggingFaceRegistrySpec,
    MlflowRegistrySpec,
    ModelEntry,
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
    """What ``resolve`` and ``pinning`` need from a source of models.

    Registry classes subclass this protocol explicitly, so the optional capabilities (:meth:`bind`,
    :meth:`declared_digests`, :meth:`attached_bom`) have one default each, here.
    """

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

    # ------------------------------------------------------------- optional capabilities, with defaults

    def bind(self, entry: ModelEntry) -> Registry:
        """The registry to deliver ``entry``'s files from in one cold fetch, after checking what the
        registry says about the pinned version against the entry, before anything is downloaded.

        Default: nothing to check, the registry itself. An MLflow registry checks the version's source
        and file list here, and only a bound registry delivers.

        Raises:
            UntrustedSourceError: the pinned version does not exist (or is not ready).
            IntegrityError: what the registry says differs from the entry; nothing was fetched.
        """
        return self

    def declared_digests(self, repo: str, revision: str, files: Sequence[str]) -> Mapping[str, str]:
        """The ``sha256:<hex>`` the registry declares for some of ``files`` of ``repo`` at ``revision``
        (a Hub's LFS files, an OCI artifact's single-file layers); files it declares nothing for are
        absent. A declaration is a claim only: the store checks the bytes against it.

        Default: the registry declares nothing.

        Raises:
            UntrustedSourceError: the repo or revision does not exist.
            IntegrityError: an answer names a file not asked about or a digest that is not sha256.
        """
        return {}

    def attached_bom(self, repo: str, revision: str, staging: Path) -> Path | None:
        """The CycloneDX BOM the publisher attached to ``repo`` at ``revision``, downloaded into
        ``staging`` (not yet schema-checked: the caller checks it), or None when there is none.

        Default: the registry has no way to attach one.

        Raises:
            UntrustedSourceError: more than one different BOM is attached.
            IntegrityError: the attached BOM's bytes differ from what the registry announced, or it is
                too large.
        """
        return None


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
