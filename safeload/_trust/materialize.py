"""A pinned entry's files, in the store and verified: found there (warm) or fetched into it (cold).

Cold: the one registry the entry names is asked for the pinned files at the pinned revision; each file
is hashed into the store (in parallel) and compared with its pin, the signature and evaluation are
verified when the entry asks for them, an attached upstream BOM is schema-checked, and only then is the
model's read-only folder made visible. Warm: the folder is found and checked with one ``stat`` per file,
against fingerprints of the signer and evaluation rules it was verified under. Every verdict comes from
:mod:`safeload._trust.verification`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from safeload._relpath import is_safe_relpath
from safeload._trust.cyclonedx import check_upstream_bom
from safeload._trust.fetched import FetchedModel, UpstreamBom
from safeload._trust.hashing import Advance, parallel, progress_bar
from safeload._trust.registries import Delivered, Registry, open_registry
from safeload._trust.signers import (
    CertificateSigner,
    KeySigner,
    Signer,
    SigstoreSigner,
    VerifiedSignature,
)
from safeload._trust.store import BlobRecord, ModelExtra, ModelRecord, Store
from safeload.errors import (
    IntegrityError,
    PolicyError,
    SignatureError,
    UntrustedSourceError,
)
from safeload.policy import ModelEntry, Policy

__all__ = ["declared_digests", "fetch_files", "materialize"]


def _registry_repo(entry: ModelEntry, kind: str) -> str:
    """The repository path to ask the registry for: a Hub serves datasets under ``datasets/``, and a
    directory registry keeps them the same way (``<path>/datasets/ORG/NAME``)."""
    if entry.kind == "dataset" and kind in ("huggingface", "directory"):
        return f"datasets/{entry.repo}"
    return entry.repo


# ------------------------------------------------------------------------------------------ model path


def _signer_fingerprint(signer: Signer) -> str:
    """Changes when the signer's settings or the key/chain/root files they name change."""
    h = hashlib.sha256(repr(signer).encode())
    paths: Sequence[Path]
    if isinstance(signer, KeySigner):
        paths = [signer.public_key]
    elif isinstance(signer, CertificateSigner):
        paths = list(signer.chain)
    elif isinstance(signer, SigstoreSigner):
        paths = [signer.trusted_root]
    for p in paths:
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return "sha256:" + h.hexdigest()


def _evaluation_fingerprint(entry: ModelEntry, policy: Policy) -> str:
    """Changes when the requirement, the datasets it accepts (and their pins), the coverage rules, or
    its signer's settings or key material change."""
    from safeload._trust.verification import RULES_VERSION, accepted_datasets

    req = entry.require_evaluation
    assert req is not None
    datasets = accepted_datasets(entry, policy)
    text = repr(
        (
            RULES_VERSION,
            req.path,
            sorted(req.metrics.items()),
            sorted(datasets.items()) if datasets is not None else None,
            _signer_fingerprint(policy.signers[req.signer]),
        )
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _warm_ok(
    record: ModelRecord, entry: ModelEntry, signer: Signer | None, unpinned: bool, policy: Policy
) -> bool:
    req = entry.require_evaluation
    if req is not None and record.extra.evaluation_config != _evaluation_fingerprint(entry, policy):
        return False  # verified against another requirement (or none): verify again
    if unpinned:
        return record.extra.listed_all
    if record.extra.listed_all:
        return False
    if signer is None:
        return record.signer is None and record.digests == dict(entry.files)
    if record.signer != signer.name or record.extra.signer_config != _signer_fingerprint(signer):
        return False
    if entry.files:
        return record.digests == dict(entry.files)
    return True  # the signature defined the file set when the folder was built


def _result(entry: ModelEntry, record: ModelRecord, store: Store) -> FetchedModel:
    sig = None
    if record.signer is not None:
        sig = VerifiedSignature(
            signer=record.signer,
            identity=record.signer_identity or "",
            digests=MappingProxyType(record.digests),
        )
    upstream = None
    bom_digest = record.extra.upstream_bom
    if bom_digest:
        upstream = UpstreamBom(
            digest=bom_digest, path=store.blob_path(bom_digest), link=record.extra.upstream_bom_link
        )
    evaluation = None
    if record.extra.evaluation:
        from safeload._trust.attestation import Evaluation as _Evaluation

        evaluation = _Evaluation.from_json(record.extra.evaluation, record.digests)
    return FetchedModel(
        name=entry.name,
        entry=entry,
        folder=record.folder,
        files=MappingProxyType(record.digests),
        signature=sig,
        upstream_bom=upstream,
        evaluation=evaluation,
    )


def materialize(pol: Policy, entry: ModelEntry, *, progress: bool | None, unpinned: bool) -> FetchedModel:
    spec = pol.registries.get(entry.registry)
    if spec is None:  # parse_policy guarantees this for pinned entries
        raise PolicyError(f"models.{entry.name}: registry {entry.registry!r} is not defined")
    signer = pol.signers[entry.signer] if entry.signer else None
    store = Store(pol.store)
    revision = entry.store_revision()

    def warm() -> FetchedModel | None:
        record = store.read_model(entry.registry, entry.store_repo, revision)
        if record is not None and _warm_ok(record, entry, signer, unpinned, pol):
            return _result(entry, store.check_model(record), store)
        return None

    hit = warm()
    if hit is not None:
        return hit
    with store.lock(f"model:{entry.registry}/{entry.store_repo}@{revision}"):
        hit = warm()  # another process may have finished it while we waited
        if hit is not None:
            return hit
        # MLflow checks the version's source and file list against the pins here; others return themselves.
        registry = open_registry(spec, jail=pol.sandbox.weakest_jail).bind(entry)
        repo = _registry_repo(entry, spec.kind)
        return _cold(
            store, registry, entry, signer, pol,
            progress=progress, unpinned=unpinned, repo=repo,
        )  # fmt: skip


def _signed_resources(sig_path: Path) -> dict[str, str]:
    """The file list a model-signing bundle claims (unverified; verification confirms it later)."""
    try:
        bundle = json.loads(sig_path.read_bytes())
        payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        resources = payload["predicate"]["resources"]
        out = {
            str(r["name"]): "sha256:" + str(r["digest"]) for r in resources if r.get("algorithm") == "sha256"
        }
    except (ValueError, KeyError, TypeError) as e:
        raise SignatureError(f"{sig_path.name}: not a model-signing signature bundle ({e})") from None
    if not out:
        raise SignatureError(f"{sig_path.name}: the signature lists no sha256-hashed files")
    return out


def _cold(
    store: Store,
    registry: Registry,
    entry: ModelEntry,
    signer: Signer | None,
    policy: Policy,
    *,
    progress: bool | None,
    unpinned: bool,
    repo: str,
) -> FetchedModel:
    revision = entry.store_revision()
    # Messages name the entry, never the store's key for it (a directory model's pins-<digest>).
    at = f"@{entry.revision[:12]}" if entry.revision else ""
    label = f"{entry.name} ({entry.registry}:{repo}{at})"
    with store.staging() as staging:
        sig_record: BlobRecord | None = None
        expected: dict[str, str | None] = dict(entry.files)
        if signer is not None:
            sig_rel = entry.signature_path
            try:
                got = registry.deliver(repo, entry.revision, {sig_rel: None}, staging)
            except UntrustedSourceError as e:
                raise SignatureError(
                    f"{label}: the entry names signer {signer.name!r} but its signature {sig_rel!r} could "
                    f"not be fetched at the pinned revision ({e}); sign the model or set `signature =`"
                ) from e
            sig_record = _ingest(store, got, sig_rel, staging, None, f"{label}:{sig_rel}")
            claimed = _signed_resources(store.blob_path(sig_record.digest))
            if not entry.files:
                for rel in claimed:
                    if rel == sig_rel or not is_safe_relpath(rel):
                        raise SignatureError(f"{label}: the signature names an unsafe path {rel!r}")
                expected = dict(claimed)
            # Signed files the policy does not pin are deliberately left out of the folder (the
            # verification core's optional set).
        elif unpinned:
            names = [r for r in registry.list_files(repo, entry.revision) if is_safe_relpath(r)]
            expected = declared_digests(registry, repo, entry.revision, names)
        if not expected:
            raise UntrustedSourceError(f"{label}: nothing to fetch (no pinned files)")
        upstream = _upstream_bom(registry, repo, entry, staging, label)

        # Digests taken from the signature's own (not yet verified) claims only steer downloads; a
        # mismatch there is the signature's failure to report, so those files are stored unchecked.
        checked = expected if entry.files or signer is None else dict.fromkeys(expected)
        records = fetch_files(store, registry, repo, entry.revision, checked, staging, label, progress)
        built = store.build_folder(staging, records)
        digests = {rel: rec.digest for rel, rec in records.items()}
        att_record, absent = _fetch_attestation(store, registry, repo, entry, staging, label)
        # Imported here: the cryptography stack costs tens of milliseconds, and warm loads of models
        # already in the store never verify a signature.
        from safeload._trust.verification import Evidence, verify_model

        evidence = Evidence(
            digests=MappingProxyType(digests),
            signature=_read_evidence(store, sig_record),
            attestation=_read_evidence(store, att_record),
            attestation_absent=absent,
        )
        outcome = verify_model(entry, policy, evidence, where=label)
        verified, evaluation = outcome.signature, outcome.evaluation
        extra = ModelExtra(
            listed_all=unpinned,
            signer_config=_signer_fingerprint(signer) if signer is not None else None,
        )
        if entry.require_evaluation is not None and evaluation is not None and att_record is not None:
            extra = replace(
                extra,
                evaluation=evaluation.to_json(),
                evaluation_digest=att_record.digest,
                evaluation_config=_evaluation_fingerprint(entry, policy),
            )
        if upstream is not None:
            what = f"{label}: attached BOM"
            bom_record = store.ingest_owned(upstream[0], staging, expected=None, what=what)
            extra = replace(extra, upstream_bom=bom_record.digest, upstream_bom_link=upstream[1])
        record = store.publish_model(
            built,
            registry=entry.registry,
            repo=entry.store_repo,
            revision=revision,
            files=records,
            signer=signer.name if signer else None,
            signer_identity=verified.identity if verified else None,
            signature_digest=sig_record.digest if sig_record else None,
            extra=extra,
        )
    return _result(entry, record, store)


def _fetch_attestation(
    store: Store, registry: Registry, repo: str, entry: ModelEntry, staging: Path, label: str
) -> tuple[BlobRecord | None, str]:
    """The entry's evaluation attestation at the pinned revision, in the store; or None and why not."""
    req = entry.require_evaluation
    if req is None:
        return None, "none is required"
    try:
        got = registry.deliver(repo, entry.revision, {req.path: None}, staging)
    except UntrustedSourceError as e:
        return None, f"{req.path!r} could not be fetched at the pinned revision ({e})"
    return _ingest(store, got, req.path, staging, None, f"{label}:{req.path}"), ""


# A model.sig or an attestation is a few KiB; the verification core refuses anything past 16 MiB.

_MAX_EVIDENCE_BYTES = 16 << 20


def _read_evidence(store: Store, record: BlobRecord | None) -> bytes | None:
    """The bytes of a signature or attestation blob just stored (capped; the core refuses more)."""
    if record is None:
        return None
    with open(store.blob_path(record.digest), "rb") as fh:
        return fh.read(_MAX_EVIDENCE_BYTES + 1)


def _upstream_bom(
    registry: Registry, repo: str, entry: ModelEntry, staging: Path, label: str
) -> tuple[Path, str | None] | None:
    """The BOM the registry has attached to the pinned revision, schema-checked before any model file is
    downloaded (a BOM that fails leaves nothing in the store), with its BOM-Link; None when there is none."""
    if entry.revision is None:
        return None
    path = registry.attached_bom(repo, entry.revision, staging)
    if path is None:
        return None
    return path, check_upstream_bom(path.read_bytes(), label)


def _ingest(
    store: Store,
    got: Delivered,
    rel: str,
    staging: Path,
    expected: str | None,
    what: str,
    advance: Advance | None = None,
) -> BlobRecord:
    path = got.paths[rel]
    ingest = store.ingest_owned if got.private else store.ingest_copy
    if advance is None:
        return ingest(path, staging, expected=expected, what=what)
    return ingest(path, staging, expected=expected, what=what, advance=advance)


def declared_digests(
    registry: Registry, repo: str, revision: str | None, names: Sequence[str]
) -> dict[str, str | None]:
    """Each of ``names`` with the sha256 the registry declares for it (a Hub's LFS files), else None.

    A declaration is only a claim: the bytes are checked against it as they are stored.
    """
    declared = registry.declared_digests(repo, revision, names) if revision is not None else {}
    return {rel: declared.get(rel) for rel in names}


def fetch_files(
    store: Store,
    registry: Registry,
    repo: str,
    revision: str | None,
    expected: Mapping[str, str | None],
    staging: Path,
    label: str,
    progress: bool | None,
) -> dict[str, BlobRecord]:
    """Deliver ``expected``'s files of ``repo`` at ``revision`` into ``staging`` and hash them into the
    store (in parallel, with a progress bar), each against its digest where one is given.

    Raises:
        UntrustedSourceError: the registry does not have the repo, revision or a file.
        IntegrityError: a file's bytes differ from its expected digest.
    """
    records: dict[str, BlobRecord] = {}
    missing: list[str] = []
    for rel, digest in expected.items():
        # Content addressing: a pinned digest already in the store needs no download, only a re-hash
        # (there is no fingerprint from this fetch to trust).
        if digest is not None and store.blob_record(digest) is not None:
            try:
                records[rel] = store.rehash_blob(digest)
                continue
            except IntegrityError:
                os.unlink(store.blob_path(digest))  # a corrupt blob is replaced by the fetch below
        missing.append(rel)
    if not missing:
        return records

    got = registry.deliver(repo, revision, {rel: expected[rel] for rel in missing}, staging)
    total = 0
    for rel in missing:
        try:
            total += got.paths[rel].stat().st_size
        except OSError:
            pass
    with progress_bar(f"verifying {label}", total, progress) as advance:

        def ingest(rel: str) -> tuple[str, BlobRecord]:
            return rel, _ingest(store, got, rel, staging, expected[rel], f"{label}:{rel}", advance)

        records.update(parallel(ingest, missing))
    return records


# ------------------------------------------------------------------------------------------ local files
