"""Drop-ins for ``huggingface_hub.snapshot_download`` and ``hf_hub_download``.

``repo_type="dataset"`` resolves a ``[datasets]`` entry the same way.

For code that downloads files itself (vLLM, llama.cpp wrappers, custom loaders): change the import and
the name resolves through ``trust.toml`` instead of the public Hub. What comes back is the store's
read-only verified folder (or a file in it), holding only pinned/signed files.

Arguments that only steer downloading (``cache_dir``, ``force_download``, ``token``, ``etag_timeout``,
``max_workers``, ``tqdm_class``, ...) are accepted and ignored: the policy decides where bytes come from.
``revision`` may be omitted, ``"main"``, or the pinned commit; any other value is refused, because the
policy pins exactly one commit per name. ``allow_patterns``/``ignore_patterns`` are accepted; the folder
returned still holds every pinned file (a superset is harmless, a missing pinned file is not possible).
A file that is not pinned raises :class:`UnpinnedFileError`, which is both an
:class:`~safeload.errors.UntrustedSourceError` and huggingface_hub's ``EntryNotFoundError``, so callers
that probe optional files keep working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub.errors import EntryNotFoundError

from safeload._trust.fetched import FetchedModel
from safeload._trust.resolve import fetch_dataset, fetch_model
from safeload.errors import UntrustedSourceError
from safeload.policy import Policy, load_policy

__all__ = ["UnpinnedFileError", "hf_hub_download", "snapshot_download"]

_PASSTHROUGH_REVISIONS = (None, "main")


class UnpinnedFileError(UntrustedSourceError, EntryNotFoundError):
    """The file is not among the model's pinned/signed files, so it is not in the verified folder."""


def _fetch(
    repo_id: str, revision: str | None, repo_type: str | None, policy: Policy | str | None
) -> FetchedModel:
    if repo_type not in (None, "model", "dataset"):
        raise UntrustedSourceError(
            f"{repo_id}: repo_type={repo_type!r} is not supported; models and [datasets] entries resolve"
        )
    pol = load_policy(policy)
    if repo_type == "dataset":
        dataset = pol.datasets.get(repo_id)
        if dataset is not None and revision not in _PASSTHROUGH_REVISIONS and revision != dataset.revision:
            raise UntrustedSourceError(
                f"dataset {repo_id}: revision {revision!r} requested, but the policy pins "
                f"{dataset.revision or 'no revision (directory registry)'}"
            )
        return fetch_dataset(repo_id, policy=pol)
    name = repo_id
    entry = pol.models.get(repo_id)
    if entry is None and revision not in _PASSTHROUGH_REVISIONS and pol.mode == "audit":
        name = f"{repo_id}@{revision}"  # audit mode: resolve that exact commit (or branch, once)
    elif entry is not None and revision not in _PASSTHROUGH_REVISIONS and revision != entry.revision:
        raise UntrustedSourceError(
            f"{repo_id}: revision {revision!r} requested, but the policy pins "
            f"{entry.revision or 'no revision (directory registry)'}. Call without "
            f"revision= (or with the pinned commit), or re-pin with `safeload pin`."
        )
    return fetch_model(name, policy=pol)


def snapshot_download(
    repo_id: str,
    *,
    repo_type: str | None = None,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    allow_patterns: list[str] | str | None = None,
    ignore_patterns: list[str] | str | None = None,
    policy: Policy | str | None = None,
    **ignored: Any,
) -> str:
    """The verified, read-only folder of ``repo_id`` (a name in the policy's ``[models]``), as a string.

    Raises:
        UntrustedSourceError: the name is not pinned (in ``[models]``, or ``[datasets]`` for
            ``repo_type="dataset"``), or another revision/repo type was asked for.
        IntegrityError, SignatureError: the bytes or the signature do not match the policy.
        ValueError: ``local_dir`` was given (copies outside the store would not stay verified).
    """
    if local_dir is not None:
        raise ValueError(
            "safeload.hub.snapshot_download does not copy into local_dir: use the returned store folder, "
            "which stays read-only and verified"
        )
    return str(_fetch(repo_id, revision, repo_type, policy).folder)


def hf_hub_download(
    repo_id: str,
    filename: str,
    *,
    subfolder: str | None = None,
    repo_type: str | None = None,
    revision: str | None = None,
    local_dir: str | Path | None = None,
    policy: Policy | str | None = None,
    **ignored: Any,
) -> str:
    """The verified store path of one pinned file of ``repo_id``, as a string.

    Raises:
        UnpinnedFileError: the file is not pinned or signed (also a huggingface_hub EntryNotFoundError).
        UntrustedSourceError, IntegrityError, SignatureError: as :func:`snapshot_download`.
        ValueError: ``local_dir`` was given.
    """
    if local_dir is not None:
        raise ValueError("safeload.hub.hf_hub_download does not copy into local_dir: use the returned path")
    rel = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
    fetched = _fetch(repo_id, revision, repo_type, policy)
    if rel not in fetched.files:
        raise UnpinnedFileError(
            f"{repo_id}: {rel!r} is not pinned (or signed) for this model, so it is not in the verified "
            f"folder. Pinned files: {', '.join(sorted(fetched.files))}. Add it with `safeload pin`."
        )
    return str(fetched.folder / rel)
