"""``kind = "huggingface"``: a Hugging Face Hub (or a mirror such as olah) through ``huggingface_hub``.

The registry's ``endpoint`` is always passed explicitly, so a policy never reaches the public Hub by
accident. Only the pinned files are downloaded, at the pinned commit, into a ``cache_dir`` inside the
caller's private staging folder: the user's own Hub cache is neither read nor written (huggingface_hub
returns cached files for a commit without looking at them, and never checks sha256 itself). The token is
the one huggingface_hub would use (``HF_TOKEN`` or the stored login) unless the registry names another
variable with ``token_env``; it is sent only to this registry's endpoint.

Size caps: every download is counted as it arrives (through huggingface_hub's progress-bar hook, which sees
each chunk before it is written) and stopped with an ``IntegrityError`` as soon as the file would grow past
the size the server announced or the registry's ``max_file_size``; an announced size above the cap is
refused before the transfer starts. The sha256 pin is what proves the bytes; the cap only keeps a lying or
broken server from filling the disk first. The byte count is proven on plain HTTP transfers (what mirrors
serve, and what ``HF_HUB_DISABLE_XET=1`` selects); a Xet transfer reports its progress from hf_xet's
native code, so there only the announced-size check is known to hold.

Xet: safeload leaves ``HF_HUB_DISABLE_XET`` to the user. Whatever transport huggingface_hub picks (plain
HTTP, or Xet with its own chunk cache), the file it returns is hashed into the store and compared with the
pin, so a poisoned chunk cache can only make a fetch fail. Mirrors such as olah serve plain HTTP; test
suites set ``HF_HUB_DISABLE_XET=1`` before importing huggingface_hub.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safeload.errors import IntegrityError, SafeloadError, UntrustedSourceError
from safeload.policy import HuggingFaceRegistrySpec
from safeload.registries import Delivered

__all__ = ["HuggingFaceRegistry"]


class HuggingFaceRegistry:
    kind = "huggingface"

    def __init__(self, spec: HuggingFaceRegistrySpec) -> None:
        self.name = spec.name
        self.endpoint = spec.endpoint
        self._token_env = spec.token_env
        self._max_file_bytes = spec.max_file_bytes

    @property
    def _token(self) -> str | None:
        if self._token_env is not None:
            return os.environ.get(self._token_env) or None
        return None  # huggingface_hub falls back to HF_TOKEN / the stored login

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self._token)

    def _translate(self, exc: Exception, what: str) -> SafeloadError:
        if isinstance(exc, SafeloadError):
            return exc
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"registry {self.name!r} ({self.endpoint})"
        if isinstance(exc, GatedRepoError):
            return UntrustedSourceError(
                f"{where}: {what} is gated; set HF_TOKEN (or token_env) to a token with access"
            )
        if isinstance(exc, RepositoryNotFoundError):
            return UntrustedSourceError(f"{where}: {what}: repository not found (or needs a token)")
        if isinstance(exc, RevisionNotFoundError):
            return UntrustedSourceError(f"{where}: {what}: revision not found; check the pinned commit")
        if isinstance(exc, EntryNotFoundError):
            return UntrustedSourceError(f"{where}: {what}: file not found at the pinned revision")
        return SafeloadError(f"{where}: could not fetch {what}: {exc}")

    def deliver(self, repo: str, revision: str | None, files: Sequence[str], staging: Path) -> Delivered:
        from huggingface_hub import hf_hub_download

        if revision is None:
            raise UntrustedSourceError(f"registry {self.name!r}: {repo} needs a pinned 40-hex revision")
        paths: dict[str, Path] = {}
        for rel in files:
            what = f"{repo}@{revision}:{rel}"
            try:
                local = hf_hub_download(
                    repo_id=repo,
                    filename=rel,
                    revision=revision,
                    cache_dir=staging / "hf-cache",
                    endpoint=self.endpoint,
                    token=self._token,
                    tqdm_class=_size_capped(self._max_file_bytes, f"registry {self.name!r}: {what}"),
                )
            except Exception as e:
                raise self._translate(e, what) from e
            paths[rel] = Path(local)
        return Delivered(paths=paths, private=True)

    def list_files(self, repo: str, revision: str | None) -> list[str]:
        try:
            return sorted(self._api().list_repo_files(repo, revision=revision))
        except Exception as e:
            raise self._translate(e, f"{repo}@{revision}") from e

    def resolve_revision(self, repo: str, ref: str | None) -> str | None:
        try:
            sha = self._api().model_info(repo, revision=ref or "main").sha
        except Exception as e:
            raise self._translate(e, f"{repo}@{ref or 'default branch'}") from e
        if not isinstance(sha, str):
            raise SafeloadError(f"registry {self.name!r}: {repo}@{ref} did not report a commit id")
        return sha

    def declared_digests(self, repo: str, revision: str, files: Sequence[str]) -> dict[str, str]:
        """The sha256 the server declares for LFS files (a claim, checked against the bytes later)."""
        try:
            infos = self._api().get_paths_info(repo, list(files), revision=revision)
        except Exception as e:
            raise self._translate(e, f"{repo}@{revision}") from e
        out: dict[str, str] = {}
        for info in infos:
            lfs = getattr(info, "lfs", None)
            if lfs is not None and getattr(lfs, "sha256", None):
                out[info.path] = "sha256:" + lfs.sha256
        return out


def _size_capped(limit: int, what: str) -> Any:
    """A huggingface_hub progress-bar class that ends a download before a byte past its cap is written.

    huggingface_hub creates the bar once the response headers are in (``total``: the announced size,
    ``initial``: bytes already on disk when resuming) and counts every chunk on it before writing the
    chunk, so raising here stops the transfer with nothing past the cap on disk. The cap is ``limit``, or
    the announced size when the server announced a smaller one.
    """
    from huggingface_hub.utils.tqdm import tqdm as hub_tqdm

    class _SizeCapped(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            announced = kwargs.get("total")
            if isinstance(announced, int) and announced > limit:
                raise IntegrityError(
                    f"{what}: the server announces {announced} bytes, over this registry's max_file_size "
                    f"({limit} bytes); nothing was downloaded. Raise max_file_size in trust.toml if the file "
                    "is really that large."
                )
            self._cap = min(limit, announced) if isinstance(announced, int) and announced >= 0 else limit
            self._seen = int(kwargs.get("initial") or 0)
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

        def update(self, n: float | None = 1) -> bool | None:
            self._seen += int(n or 0)
            if self._seen > self._cap:
                raise IntegrityError(
                    f"{what}: the server sent more than {self._cap} bytes ("
                    + ("its announced size" if self._cap < limit else "this registry's max_file_size")
                    + "); the download was stopped and nothing was stored"
                )
            result: bool | None = super().update(n)
            return result

    return _SizeCapped
