"""From a name to verified bytes in the store: the ``[models]`` lookup and the orchestration around it.

``fetch_model(name)`` looks the name up in the policy's ``[models]`` and has
:mod:`safeload._trust.materialize` fetch or find the pinned files, verified; each resolution is written
to the audit log.

Audit mode (``mode = "audit"``) relaxes only allowlisting. A name missing from ``[models]`` that looks
like a Hub repo id (``org/name``, optionally ``org/name@<40-hex commit>``) resolves through the policy's
only ``huggingface`` registry (none or several: refused, because guessing the source is exactly model
confusion). Without ``@<commit>`` the default branch is resolved *once* to its current commit, and every
file of the repo is fetched at that commit; the audit log line records the commit and the ``safeload pin``
command that would allow it in enforce mode. Files are still hashed into the store, LFS files are checked
against the sha256 the server declares, and every integrity or signature failure is fatal in both modes.
With ``require_signatures = true`` an unpinned name still loads in audit mode (there is no signer to
check); its audit line says that enforce mode would refuse it.

Directory registries have no history: their entries may omit ``revision`` and are filed in the store
under a revision derived from the pin set (:meth:`~safeload.policy.ModelEntry.store_revision`). Local
paths pinned under ``[files]`` are :mod:`safeload._trust.local_files`'.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from safeload._trust import audit
from safeload._trust.fetched import FetchedModel
from safeload._trust.materialize import materialize
from safeload._trust.registries import open_registry
from safeload._trust.store import Store
from safeload.errors import (
    SafeloadError,
    UntrustedSourceError,
)
from safeload.policy import HuggingFaceRegistrySpec, ModelEntry, Policy, load_policy

__all__ = ["fetch_dataset", "fetch_model", "pin_hint"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _hf_registries(policy: Policy) -> list[HuggingFaceRegistrySpec]:
    return [r for r in policy.registries.values() if isinstance(r, HuggingFaceRegistrySpec)]


def pin_hint(name: str, policy: Policy) -> str:
    """What to run and what to add so that ``name`` resolves (:func:`safeload._trust.pinning.pin_hint`)."""
    from safeload._trust.pinning import pin_hint as hint  # pinning imports this module

    return hint(name, policy)


def _unpinned_entry(policy: Policy, name: str) -> tuple[ModelEntry, str | None]:
    """Audit mode: the entry an unpinned ``org/name[@commit]`` resolves to, and the ref it came from."""
    repo, _, ref = name.partition("@")
    if not _REPO_ID.match(repo):
        raise UntrustedSourceError(pin_hint(name, policy) + "\n(audit mode resolves only 'org/name' ids)")
    hf = _hf_registries(policy)
    if len(hf) != 1:
        raise UntrustedSourceError(
            pin_hint(name, policy)
            + f"\n(audit mode resolves unpinned names only through one huggingface registry; this policy "
            f"has {len(hf)}, so the source would be a guess)"
        )
    spec = hf[0]
    requested = ref or None
    if requested is not None and _COMMIT.match(requested):
        commit = requested
    else:
        commit = open_registry(spec, jail=policy.sandbox.weakest_jail).resolve_revision(repo, requested) or ""
        if not _COMMIT.match(commit):
            raise UntrustedSourceError(f"{spec.name}: {repo}@{requested} did not resolve to a commit id")
    entry = ModelEntry(name=name, registry=spec.name, repo=repo, revision=commit)
    return entry, requested


def fetch_model(name: str, *, policy: Policy | None = None, progress: bool | None = None) -> FetchedModel:
    """Resolve ``name`` through the policy and return its verified, read-only folder in the store.

    ``progress``: show a progress bar while hashing (default: when stderr is a terminal).

    Raises:
        UntrustedSourceError: the name is not pinned (the message shows the ``safeload pin`` command and
            the entry to add), or the registry does not have the pinned repo/revision/file.
        IntegrityError: a file's bytes differ from its pin, or the store was tampered with.
        SignatureError: the entry names a signer and the signature is missing, invalid, or disagrees.
        PolicyError: the policy is malformed.
        AuditLogError: the audit log cannot be written.
        UnsafeStoreError: a user other than the caller and root could change the store's files.
        StoreAccessError: the model is not in the store yet and this process may not write the store.
    """
    pol = load_policy(policy)
    entry = pol.models.get(name)
    unpinned = False
    requested: str | None = None
    if entry is None:
        if pol.mode != "audit":
            hint = pin_hint(name, pol)
            audit.record(pol, name=name, decision="refuse", reason="not pinned in [models]")
            raise UntrustedSourceError(hint)
        try:
            entry, requested = _unpinned_entry(pol, name)
        except SafeloadError as e:
            audit.record(pol, name=name, decision="refuse", reason=str(e))
            raise
        unpinned = True
    base = {"name": name, "registry": entry.registry, "repo": entry.repo, "revision": entry.store_revision()}
    fetched = _materialize_or_refuse(pol, entry, name, base, progress=progress, unpinned=unpinned)
    reason = "pinned"
    if unpinned:
        reason = (
            "not pinned in [models]; enforce mode would refuse it. Pin with: "
            f"safeload pin hf://{entry.repo}@{entry.revision} --name {json.dumps(name.partition('@')[0])}"
        )
        if requested is not None and requested != entry.revision:
            reason += f" (requested {requested!r}, resolved to that commit)"
        if pol.require_signatures:
            reason += "; unsigned, which require_signatures = true refuses in enforce mode"
    sig = fetched.signature
    audit.record(
        pol,
        **base,
        files=dict(fetched.files),
        signer=sig.signer if sig else None,
        signer_identity=sig.identity if sig else None,
        decision="allow-unpinned" if unpinned else "allow",
        reason=reason,
    )
    return fetched


def fetch_dataset(name: str, *, policy: Policy | None = None, progress: bool | None = None) -> FetchedModel:
    """Resolve the ``[datasets]`` entry ``name`` and return its verified, read-only folder in the store,
    exactly as :func:`fetch_model` does for a model.

    Raises:
        UntrustedSourceError: the name is not a ``[datasets]`` entry, or the registry lacks a file.
        IntegrityError, SignatureError, PolicyError: as :func:`fetch_model`.
    """
    pol = load_policy(policy)
    entry = pol.datasets.get(name)
    if entry is None:
        audit.record(pol, name=name, decision="refuse", reason="not pinned in [datasets]")
        known = ", ".join(sorted(pol.datasets)) or "none"
        raise UntrustedSourceError(
            f"dataset {name!r} is not in the policy's [datasets] ({pol.source or 'built-in default'}; "
            f"pinned: {known}), so it will not be loaded. To allow it, pin a commit and every file's hash:\n"
            f"    safeload pin hf://datasets/{name}@<40-hex commit>"
        )
    base = {
        "name": name, "registry": entry.registry, "repo": entry.store_repo, "revision": entry.store_revision()
    }
    fetched = _materialize_or_refuse(pol, entry, name, base, progress=progress, unpinned=False)
    audit.record(pol, **base, files=dict(fetched.files), decision="allow", reason="pinned dataset")
    return fetched


def _materialize_or_refuse(
    pol: Policy,
    entry: ModelEntry,
    name: str,
    base: Mapping[str, object],
    *,
    progress: bool | None,
    unpinned: bool,
) -> FetchedModel:
    """:func:`materialize`, with a refusal written to the audit log and a repair hint naming ``name``."""
    try:
        return materialize(pol, entry, progress=progress, unpinned=unpinned)
    except SafeloadError as e:
        audit.record(pol, **base, decision="refuse", reason=f"{type(e).__name__}: {e}")
        named = Store.name_repair(e, name)
        if named is not e:
            raise named from e
        raise
