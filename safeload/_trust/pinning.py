"""Writing ``[models]`` entries: what ``safeload pin`` does, like ``pip-compile --generate-hashes``.

``pin_model("hf://org/name@<commit>", policy_path=...)`` lists every file of the repo at that commit,
downloads each into the store (hashing it while it is copied; LFS files are checked against the sha256 the
server declares), and writes ``[models."<name>"]`` with the commit and every file's hash. Only the tables of
that one entry are replaced; the rest of the file, comments included, is kept byte for byte. The new file is
re-parsed before it atomically replaces the old one.

URLs:
- ``hf://org/name@<40-hex commit>``: through a ``huggingface`` registry (``registry=`` or the policy's only
  one; there is no implicit one: a policy without one is refused with the lines that would add it).
  ``@<branch or tag>`` or no ``@`` is accepted only with ``resolve=True``, which asks the registry which
  commit it points at now and pins that commit.
- ``dir://org/name``: through a ``directory`` registry; no revision (the pin set keys the store folder).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from safeload._trust.materialize import declared_digests, fetch_files
from safeload._trust.registries import open_registry
from safeload._trust.store import Store
from safeload.errors import PolicyError, UntrustedSourceError
from safeload.policy import (
    DirectoryRegistrySpec,
    HuggingFaceRegistrySpec,
    MlflowRegistrySpec,
    ModelEntry,
    OciRegistrySpec,
    Policy,
    RegistrySpec,
    dotted,
    parse_policy,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "OciTarget",
    "hash_repo",
    "missing_policy_error",
    "oci_target",
    "pin_hint",
    "pin_model",
    "render_entry",
    "write_entry",
]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# mlflow://REGISTRY/NAME/VERSION or mlflow://REGISTRY/NAME@ALIAS (REGISTRY: the trust.toml registry name)
_MLFLOW_URL = re.compile(r"^mlflow://([A-Za-z0-9][A-Za-z0-9_-]*)/([^@\s]+?)(?:/([0-9]+)|@([A-Za-z0-9_-]+))$")
_HEADER = re.compile(r"^\s*\[(?!\[)(.*)\]\s*(#.*)?$")
_OCI_URL = re.compile(
    r"^oci://([A-Za-z0-9.-]+(?::[0-9]{1,5})?)/([a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::([A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(sha256:[0-9a-f]{64}))?$"
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_URL = re.compile(r"^(hf|dir)://([A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*){0,2})(?:@(.+))?$")


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


_DEFAULT_HUB = "https://huggingface.co"
# What a registry of each kind looks like in trust.toml, and the `safeload init` option that writes one.
_REGISTRY_LINES = {
    "dir": ('[registries.local]\nkind = "directory"\npath = "PATH"', "safeload init --dir PATH"),
    "hf": (
        f'[registries.hub]\nkind = "huggingface"\nendpoint = "{_DEFAULT_HUB}"',
        f"safeload init --hub {_DEFAULT_HUB}",
    ),
    "oci": ('[registries.fleet]\nkind = "oci"\nendpoint = "https://HOST"', ""),
    "mlflow": ('[registries.ml]\nkind = "mlflow"\nendpoint = "https://HOST"', ""),
}
_KIND_NAMES = {"dir": "directory", "hf": "huggingface", "oci": "oci"}


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def missing_policy_error(policy_path: Path, scheme: str = "dir") -> PolicyError:
    """The error for pinning into a ``trust.toml`` that does not exist: how to create one."""
    lines, init = _REGISTRY_LINES.get(scheme, _REGISTRY_LINES["dir"])
    how = f"create it with\n    {init}\nor write it yourself with" if init else "create it with"
    return PolicyError(
        f"{policy_path} does not exist, so there is no registry to pin from; {how} these lines:\n"
        f"{_indent('version = 1' + chr(10) + lines)}"
        + ("\n(a directory registry serves PATH/ORG/NAME/<files>)" if scheme == "dir" else "")
    )


def _no_registry_error(policy_path: Path, scheme: str, found: int, names: list[str]) -> PolicyError:
    kind = _KIND_NAMES[scheme]
    if found:
        return PolicyError(
            f"{found} {kind} registries in {policy_path} ({', '.join(names)}); name one with --registry"
        )
    lines, _ = _REGISTRY_LINES[scheme]
    return PolicyError(
        f"{policy_path} has no {kind} registry to pin {scheme}:// from (registries are never implicit); "
        f"add one:\n{_indent(lines)}"
    )


def _example_command(spec: RegistrySpec, repo: str, name: str, several: bool) -> str:
    if isinstance(spec, HuggingFaceRegistrySpec):
        cmd = f"safeload pin hf://{repo}@<40-hex commit>"
    elif isinstance(spec, DirectoryRegistrySpec):
        cmd = f"safeload pin dir://{repo}"
    elif isinstance(spec, OciRegistrySpec):
        namespace = f"{spec.namespace}/" if spec.namespace else ""
        cmd = f"safeload pin oci://{urlsplit(spec.endpoint).netloc}/{namespace}{repo}@sha256:<digest>"
    else:  # a kind without a pin URL of its own: the entry is written by hand
        return f"(registry {spec.name!r}, kind {spec.kind!r}: write the entry below by hand)"
    if several:
        cmd += f" --registry {spec.name}"
    if name != repo:
        cmd += f" --name {_q(name)}"
    return cmd


def pin_hint(name: str, policy: Policy) -> str:
    """What to run and what to add so that ``name`` resolves: part of every unknown-name error.

    The ``safeload pin`` command is given for each registry the policy has (``hf://`` for a huggingface
    registry, ``dir://`` for a directory, ``oci://`` for an oci one); a policy without registries is told
    how to create one (``safeload init``). No registry is ever assumed.
    """
    repo = name if _REPO_ID.match(name) else "<org>/<name>"
    where = f" ({policy.source})" if policy.source else " (the built-in default policy: no trust.toml found)"
    head = f"{name!r} is not in the policy's [models]{where}, so it will not be loaded."
    specs = list(policy.registries.values())
    if not specs:
        return (
            f"{head} The policy names no registry to fetch it from. Create a trust.toml with one, then pin "
            "the model and every file's hash:\n"
            f"    safeload init --dir PATH   (a folder of models laid out as PATH/{repo}/<files>)\n"
            f"    safeload pin dir://{repo}\n"
            f"or, from a Hugging Face hub: safeload init --hub {_DEFAULT_HUB}; "
            f"safeload pin hf://{repo}@<40-hex commit>"
        )
    kinds = [type(spec) for spec in specs]
    commands = [_example_command(spec, repo, name, kinds.count(type(spec)) > 1) for spec in specs]
    first = specs[0]
    revision = (
        '    revision = "<40-hex commit>"\n'
        if isinstance(first, HuggingFaceRegistrySpec)
        else '    revision = "sha256:<manifest digest>"\n'
        if isinstance(first, OciRegistrySpec)
        else ""
    )
    return (
        f"{head} To allow it, pin it and every file's hash:\n"
        + "".join(f"    {cmd}\n" for cmd in commands)
        + "which adds to trust.toml an entry like:\n"
        f"    [models.{_q(name)}]\n"
        f"    registry = {_q(first.name)}\n"
        f"    repo = {_q(repo)}\n"
        f"{revision}"
        '    files = { "model.safetensors" = "sha256:<hex>", "config.json" = "sha256:<hex>" }'
    )


def _table(entry: ModelEntry) -> str:
    return "datasets" if entry.kind == "dataset" else "models"


def render_entry(entry: ModelEntry) -> str:
    """The TOML text of one ``[models."name"]`` (or ``[datasets."name"]``) entry, with its ``files``."""
    head = dotted(_table(entry), entry.name)
    lines = [f"[{head}]", f"registry = {_q(entry.registry)}", f"repo = {_q(entry.repo)}"]
    if entry.revision is not None:
        lines.append(f"revision = {_q(entry.revision)}")
    if entry.signer is not None:
        lines.append(f"signer = {_q(entry.signer)}")
    if entry.signature is not None:
        lines.append(f"signature = {_q(entry.signature)}")
    if entry.task is not None:
        lines.append(f"task = {_q(entry.task)}")
    if entry.datasets:
        lines.append(f"datasets = [{', '.join(_q(d) for d in entry.datasets)}]")
    if entry.base_model is not None:
        lines.append(f"base_model = {_q(entry.base_model)}")
    if entry.allow_code:
        lines.append("allow_code = true")
    if entry.trusted_types:
        lines.append(f"trusted_types = [{', '.join(_q(t) for t in entry.trusted_types)}]")
    req = entry.require_evaluation
    if req is not None:
        metrics = ", ".join(
            f"{_q(name)} = {_q(f'{op} {limit:g}')}" for name, (op, limit) in sorted(req.metrics.items())
        )
        path = f", path = {_q(req.path)}" if req.path != "evaluation.intoto.jsonl" else ""
        lines.append(f"require_evaluation = {{ signer = {_q(req.signer)}, metrics = {{ {metrics} }}{path} }}")
    if entry.source is not None:
        lines.append(f"source = {_q(entry.source)}")
    if entry.flavor is not None:
        lines.append(f"flavor = {_q(entry.flavor)}")
    if entry.run_id is not None:
        lines.append(f"run_id = {_q(entry.run_id)}")
    if entry.alias is not None:
        lines.append(f"alias = {_q(entry.alias)}")
    lines.append(f"[{head}.files]")
    lines.extend(f"{_q(rel)} = {_q(entry.files[rel])}" for rel in sorted(entry.files))
    if entry.sizes:
        lines.append(f"[{head}.sizes]")
        lines.extend(f"{_q(rel)} = {entry.sizes[rel]}" for rel in sorted(entry.sizes))
    return "\n".join(lines) + "\n"


def _header_path(inner: str) -> tuple[str, ...] | None:
    try:
        data = tomllib.loads(f"[{inner}]")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    node: object = data
    while isinstance(node, dict) and len(node) == 1:
        key = next(iter(node))
        path.append(key)
        node = node[key]
    return tuple(path)


def write_entry(policy_path: Path, entry: ModelEntry, *, extra_text: str = "") -> Policy:
    """Replace (or add) ``entry``'s tables in ``policy_path``, keeping everything else; return the policy.

    Raises:
        PolicyError: the entry is written inline (not as its own tables) so it cannot be edited safely,
            or the result does not parse.
    """
    text = policy_path.read_text(encoding="utf-8") if policy_path.exists() else "version = 1\n"
    before = parse_policy(text, source=policy_path)
    table = _table(entry)
    lines = text.splitlines(keepends=True)
    keep: list[str] = []
    removing = False
    found = False
    for line in lines:
        m = _HEADER.match(line)
        if m is not None:
            path = _header_path(m.group(1))
            removing = path is not None and len(path) >= 2 and path[0] == table and path[1] == entry.name
            found |= removing
        if not removing:
            keep.append(line)
    entries = before.datasets if entry.kind == "dataset" else before.models
    if entry.name in entries and not found:
        raise PolicyError(
            f'{dotted(table, entry.name)}: written inline rather than as its own [{table}."..."] table; '
            "edit it by hand or move it to its own table so `safeload pin` can replace it"
        )
    new_text = "".join(keep)
    if new_text and not new_text.endswith("\n"):
        new_text += "\n"
    new_text = new_text.rstrip("\n") + "\n\n" + extra_text + render_entry(entry)
    policy = parse_policy(new_text, source=policy_path)
    written = policy.datasets if entry.kind == "dataset" else policy.models
    if written.get(entry.name) != entry:
        raise PolicyError(f"{dotted(table, entry.name)}: the rewritten policy does not hold the new entry")
    tmp = policy_path.with_name(f".{policy_path.name}.tmp-{os.getpid()}")
    tmp.write_text(new_text, encoding="utf-8")
    if policy_path.exists():
        os.chmod(tmp, policy_path.stat().st_mode & 0o7777)
    os.replace(tmp, policy_path)
    return policy


def hash_repo(
    policy: Policy, spec: RegistrySpec, repo: str, revision: str | None, *, progress: bool | None = None
) -> dict[str, str]:
    """Every file of ``repo`` at ``revision``, downloaded into the store and hashed: path -> digest.

    Raises:
        UntrustedSourceError: the registry does not have the repo or revision.
        IntegrityError: a file's bytes differ from the sha256 the server declares for it.
    """
    registry = open_registry(spec, jail=policy.sandbox.weakest_jail)
    names = registry.list_files(repo, revision)
    if not names:
        raise UntrustedSourceError(f"{spec.name}: {repo}@{revision} has no files")
    expected = declared_digests(registry, repo, revision, names)
    store = Store(policy.store)
    with store.staging() as staging:
        label = f"{spec.name}:{repo}"
        records = fetch_files(store, registry, repo, revision, expected, staging, label, progress)
    return {rel: record.digest for rel, record in records.items()}


def pin_model(
    url: str,
    *,
    policy_path: Path,
    registry: str | None = None,
    name: str | None = None,
    resolve: bool = False,
    allow_code: bool = False,
) -> tuple[str, ModelEntry]:
    """Pin ``url`` (``hf://org/name@<commit>`` or ``dir://org/name``) into ``policy_path``'s ``[models]``;
    ``hf://datasets/org/name@<commit>`` (or ``dir://datasets/org/name``) into its ``[datasets]``.

    Returns the model's name and the entry written. An existing entry's ``signer``/``signature``/``task``/
    ``datasets`` are kept. ``allow_code`` is for ``mlflow://`` URLs only: pin a model that runs its own
    code, as the user's decision to run it (see :func:`_pin_mlflow`).

    Raises:
        PolicyError: the URL is malformed, the revision is not a commit (and ``resolve`` is False), the
            registry is unknown or ambiguous, or the policy file cannot be rewritten safely.
        UntrustedSourceError: the registry does not have the repo, revision or files.
        IntegrityError: a downloaded file does not match the digest the server declared for it.
    """
    if url.startswith("oci://"):
        return _pin_oci(url, policy_path=Path(policy_path), registry=registry, name=name, resolve=resolve)
    if url.startswith("mlflow://"):
        return _pin_mlflow(url, policy_path=Path(policy_path), name=name, allow_code=allow_code)
    m = _URL.match(url)
    if m is None:
        raise PolicyError(
            f"{url!r}: expected hf://org/name@<40-hex commit>, dir://org/name or oci://host/repo@sha256:<hex>"
        )
    scheme, repo, ref = m.group(1), m.group(2), m.group(3)
    # hf://datasets/ORG/NAME: a Hub dataset, pinned into [datasets]; the registry is asked for datasets/...
    dataset = repo.startswith("datasets/") and repo.count("/") == 2
    fetch_repo = repo
    if dataset:
        repo = repo.removeprefix("datasets/")
    policy_path = Path(policy_path)
    if not policy_path.exists():
        raise missing_policy_error(policy_path, scheme)
    policy = parse_policy(policy_path.read_text(encoding="utf-8"), source=policy_path)
    kind: type[HuggingFaceRegistrySpec] | type[DirectoryRegistrySpec] = (
        HuggingFaceRegistrySpec if scheme == "hf" else DirectoryRegistrySpec
    )
    candidates = [r for r in policy.registries.values() if isinstance(r, kind)]
    if registry is not None:
        found = policy.registries.get(registry)
        if found is None or not isinstance(found, kind):
            want = _KIND_NAMES[scheme]
            have = ", ".join(r.name for r in candidates) or "none"
            raise PolicyError(
                f"registries.{registry}: no {want} registry by that name in {policy_path} "
                f"({want} registries there: {have})"
                + ("" if candidates else f"; add one:\n{_indent(_REGISTRY_LINES[scheme][0])}")
            )
        spec: RegistrySpec = found
    elif len(candidates) == 1:
        spec = candidates[0]
    else:
        raise _no_registry_error(policy_path, scheme, len(candidates), [r.name for r in candidates])
    revision: str | None
    if isinstance(spec, HuggingFaceRegistrySpec):
        if ref is not None and _COMMIT.match(ref):
            revision = ref
        elif resolve:
            revision = open_registry(spec, jail=policy.sandbox.weakest_jail).resolve_revision(fetch_repo, ref)
            if revision is None or not _COMMIT.match(revision):
                raise UntrustedSourceError(f"{spec.name}: {repo}@{ref} did not resolve to a commit id")
        else:
            raise PolicyError(
                f"{url}: the revision must be a 40-hex commit id, got {ref!r}; pass the commit, or resolve "
                "the branch to its current commit explicitly (safeload pin --resolve)"
            )
    else:
        if ref is not None and not _COMMIT.match(ref):
            raise PolicyError(
                f"{url}: a directory revision is optional and, if given, a 40-hex id; got {ref!r}"
            )
        revision = ref
    model_name = name or repo
    old = (policy.datasets if dataset else policy.models).get(model_name)
    signer = old.signer if old is not None else None
    signature = old.signature if old is not None else None
    digests = hash_repo(policy, spec, fetch_repo, revision)
    sig_rel = signature or ("model.sig" if signer else None)
    if sig_rel is not None:
        digests.pop(sig_rel, None)
    # An evaluation attestation is about the model, not part of it.
    req = old.require_evaluation if old is not None else None
    digests.pop(req.path if req is not None else "evaluation.intoto.jsonl", None)
    entry = ModelEntry(
        name=model_name,
        registry=spec.name,
        repo=repo,
        revision=revision,
        files=MappingProxyType(dict(sorted(digests.items()))),
        signer=signer,
        signature=signature,
        task=old.task if old is not None else None,
        datasets=old.datasets if old is not None else (),
        base_model=old.base_model if old is not None else None,
        allow_code=old.allow_code if old is not None else False,
        kind="dataset" if dataset else "model",
        require_evaluation=req,
    )
    write_entry(policy_path, entry)
    return model_name, entry


@dataclass(frozen=True)
class OciTarget:
    """An ``oci://`` reference matched to the policy's oci registry for its host."""

    spec: OciRegistrySpec
    repo: str  # relative to the registry's namespace, as a [models] entry names it
    tag: str | None
    digest: str | None


def oci_target(url: str, policy: Policy, *, registry: str | None = None) -> OciTarget:
    """Match ``oci://HOST[:PORT]/REPO(:TAG|@sha256:<hex>)`` to the one oci registry of ``policy`` whose
    endpoint has that host (and ``registry`` as its name, when given).

    Raises:
        PolicyError: the reference is malformed, no single registry matches, or the path is outside the
            registry's namespace.
    """
    m = _OCI_URL.match(url)
    if m is None:
        raise PolicyError(f"{url!r}: expected oci://HOST[:PORT]/REPO@sha256:<64 hex> or oci://HOST/REPO:TAG")
    host, path, tag, digest = m.group(1), m.group(2), m.group(3), m.group(4)
    candidates = [
        r
        for r in policy.registries.values()
        if isinstance(r, OciRegistrySpec)
        and (registry is None or r.name == registry)
        and urlsplit(r.endpoint).netloc == host
    ]
    if len(candidates) != 1:
        raise PolicyError(
            f"{url}: {len(candidates)} oci registries in {policy.source or 'the policy'} have the endpoint "
            f"host {host!r}"
            + (f" and the name {registry!r}" if registry else "")
            + '; add one ([registries.NAME] kind = "oci", endpoint = "https://HOST") or name it with '
            "--registry"
        )
    spec = candidates[0]
    repo = path
    if spec.namespace:
        if not path.startswith(spec.namespace + "/"):
            raise PolicyError(f"{url}: {path!r} is outside the registry's namespace {spec.namespace!r}")
        repo = path[len(spec.namespace) + 1 :]
    return OciTarget(spec=spec, repo=repo, tag=tag, digest=digest)


def _pin_oci(
    url: str, *, policy_path: Path, registry: str | None, name: str | None, resolve: bool
) -> tuple[str, ModelEntry]:
    """``oci://HOST[:PORT]/REPO@sha256:<hex>`` (or ``:TAG`` with ``resolve``) into ``[models]``."""
    if not policy_path.exists():
        raise missing_policy_error(policy_path, "oci")
    policy = parse_policy(policy_path.read_text(encoding="utf-8"), source=policy_path)
    target = oci_target(url, policy, registry=registry)
    spec, repo, tag, digest = target.spec, target.repo, target.tag, target.digest
    if digest is None:
        if not resolve:
            raise PolicyError(
                f"{url}: {tag or 'latest'!r} is a tag, and tags move; give the manifest digest "
                "(oci://HOST/REPO@sha256:...), or pass --resolve to pin the digest it points at now"
            )
        digest = open_registry(spec, jail=policy.sandbox.weakest_jail).resolve_revision(repo, tag)
    digests = hash_repo(policy, spec, repo, digest)
    old = policy.models.get(name or repo)
    sig_rel = (old.signature or "model.sig") if old is not None and old.signer else None
    if sig_rel is not None:
        digests.pop(sig_rel, None)
    entry = ModelEntry(
        name=name or repo,
        registry=spec.name,
        repo=repo,
        revision=digest,
        files=MappingProxyType(dict(sorted(digests.items()))),
        signer=old.signer if old is not None else None,
        signature=old.signature if old is not None else None,
        task=old.task if old is not None else None,
        datasets=old.datasets if old is not None else (),
    )
    write_entry(policy_path, entry)
    return entry.name, entry


def _pin_mlflow(
    url: str, *, policy_path: Path, name: str | None, allow_code: bool = False
) -> tuple[str, ModelEntry]:
    """Pin ``mlflow://REGISTRY/NAME/VERSION`` (or ``@ALIAS``, resolved to its version now and only now):
    every file hashed through the same fetch a load makes, the version's ``source`` and run id, each file's
    size, and the flavor MLmodel names, after the same MLmodel checks a load makes, so a model that could
    never load safely is refused here, by the field that asks for its code. From an alias, the entry
    records it (``alias = "..."``): ``models:/NAME@ALIAS`` then loads this entry's version, whatever the
    alias points at later.

    A model that asks to run its code is pinned only with ``allow_code`` (or over an entry that already
    says ``allow_code = true``): it is then written with ``flavor = "python_function"`` and
    ``allow_code = true``, for :func:`safeload.mlflow.pyfunc.load_model`. An existing entry's
    ``trusted_types`` are kept; for a sklearn model without them, a comment above the entry names the types
    its skops file holds beyond skops's safe set (the user decides whether to trust them).

    Raises:
        PolicyError: the URL is malformed, or REGISTRY is not an mlflow registry of the policy.
        UntrustedSourceError: the model, version or alias does not exist.
        IntegrityError: the server's answers break the registry's rules.
        UnsafeContentError, UnsupportedFormatError: MLmodel asks to run the model's code (and
            ``allow_code`` is not given), or names no flavor safeload loads (nothing is written then).
    """
    import tempfile

    from safeload._trust.mlmodel import HANDLED, check_mlmodel, code_fields, read_mlmodel, trusted_types_hint
    from safeload._trust.registries.mlflow import MlflowRegistry

    m = _MLFLOW_URL.match(url)
    if m is None:
        raise PolicyError(f"{url!r}: expected mlflow://REGISTRY/NAME/VERSION or mlflow://REGISTRY/NAME@ALIAS")
    reg_name, repo, version_ref, alias = m.groups()
    if not policy_path.exists():
        raise missing_policy_error(policy_path, "mlflow")
    policy = parse_policy(policy_path.read_text(encoding="utf-8"), source=policy_path)
    spec = policy.registries.get(reg_name)
    if not isinstance(spec, MlflowRegistrySpec):
        have = ", ".join(r.name for r in policy.registries.values() if isinstance(r, MlflowRegistrySpec))
        raise PolicyError(
            f"registries.{reg_name}: no mlflow registry by that name in {policy_path} (mlflow registries "
            f"there: {have or 'none'}); add one:\n{_indent(_REGISTRY_LINES['mlflow'][0])}"
        )
    registry = open_registry(spec, jail=policy.sandbox.weakest_jail)
    assert isinstance(registry, MlflowRegistry)
    version = registry.resolve_revision(repo, version_ref or alias) or ""
    seen = registry.describe(repo, version)
    model_name = name or repo
    old = policy.models.get(model_name)
    allow_code = allow_code or (old is not None and old.allow_code)
    trusted_types = old.trusted_types if old is not None else ()
    # What the server lists now, as a provisional entry: the fetch is bound to this very listing.
    listed = ModelEntry(
        name=model_name, registry=spec.name, repo=repo, revision=version, source=seen.source,
        files=MappingProxyType({rel: "" for rel in seen.sizes}), sizes=MappingProxyType(dict(seen.sizes)),
    )
    bound = registry.bind(listed)
    store = Store(policy.store)
    with store.staging() as staging:
        records = fetch_files(
            store, bound, repo, version, {rel: None for rel in seen.sizes}, staging,
            f"{spec.name}:{repo}/{version}", None,
        )
    digests = {rel: record.digest for rel, record in records.items()}
    where = f"mlflow://{reg_name}/{repo}/{version}"
    with tempfile.TemporaryDirectory(prefix="safeload-pin-") as tmp:
        # The stored blobs, laid out as the model's folder, for the checks a load makes.
        for rel, digest in digests.items():
            link = Path(tmp) / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(store.blob_path(digest))
        doc = read_mlmodel(Path(tmp), where)
        flavors = doc["flavors"]
        # A flavor safeload loads; else the first listed, which the checks below refuse by name (a model
        # that asks to run its code is refused for that first, unless code is allowed).
        flavor = next((f for f in HANDLED if f in flavors), next(iter(sorted(flavors)), ""))
        runs_code = bool(code_fields(doc, digests))
        if allow_code and runs_code:
            flavor = "python_function"
        entry = ModelEntry(
            name=model_name, registry=spec.name, repo=repo, revision=version, source=seen.source,
            flavor=flavor, files=MappingProxyType(dict(sorted(digests.items()))),
            sizes=MappingProxyType(dict(sorted(seen.sizes.items()))), alias=alias, run_id=seen.run_id,
            allow_code=allow_code and runs_code, trusted_types=trusted_types,
        )  # fmt: skip
        check_mlmodel(entry, Path(tmp), entry.files, flavor, where)
        hint = ""
        if flavor == "sklearn" and not trusted_types:
            hint = trusted_types_hint(Path(tmp), doc, model_name)
    write_entry(policy_path, entry, extra_text=hint)
    return model_name, entry
