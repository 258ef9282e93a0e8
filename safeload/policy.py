"""``trust.toml``: the policy that decides what may be loaded, from where, and how.

Each TOML table is a frozen dataclass; every validation error is a :class:`~safeload.errors.PolicyError`
whose message starts with the dotted path of the bad field and says what is allowed, e.g.
``models."acme/sentiment".revision: must be a 40-hex commit id, got 'main'``.

Discovery (:func:`load_policy`): the ``policy=`` argument, ``$SAFELOAD_POLICY``, ``./trust.toml``,
``~/.config/safeload/trust.toml``, then the built-in default (local files may be opened, always sandboxed;
no remote name resolves). Relative paths inside a policy file resolve against the file's folder.

Revisions. A ``huggingface`` model's ``revision`` must be a full 40-hex commit id, checked when the policy is
parsed. A ``directory`` registry has no history: ``revision`` is optional there; when omitted, the store
keys the model by the digest of its pin set (see :func:`ModelEntry.store_revision`), so changing a pin
gives a new folder and never edits a verified one.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from safeload._relpath import is_safe_relpath
from safeload._trust.signers import CertificateSigner, KeySigner, Signer, SigstoreSigner
from safeload._units import parse_duration, parse_size
from safeload.errors import PolicyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ModelEntry", "Policy", "load_policy", "parse_policy"]

_GiB = 1 << 30
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SUPPORTED_VERSIONS = (1,)
DEFAULT_SIGNATURE = "model.sig"


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxSettings:
    """``[sandbox]``: how the jail runs pickle-family artifacts."""

    unpickler: Literal["inert", "execute"] = "inert"
    # The weakest jail tier accepted (safeload._jail.tiers): "full", "namespaces" or "landlock" (any).
    weakest_jail: Literal["full", "namespaces", "landlock"] = "landlock"
    timeout_s: float = 120.0
    memory_bytes: int = 8 * _GiB
    max_output_bytes: int = 64 * _GiB


@dataclass(frozen=True, kw_only=True, slots=True)
class HuggingFaceRegistrySpec:
    """``[registries.NAME] kind = "huggingface"``: a Hub (or mirror) at ``endpoint``.

    ``token_env`` names the environment variable holding the access token (default: huggingface_hub's own
    ``HF_TOKEN`` / stored login). ``max_file_bytes`` caps every download: no file is written past it, nor
    past the size the server itself announced. ``redirect_hosts`` are the hosts (``name``,
    ``name:port``, ``*.domain``) besides the endpoint that downloads may be redirected to, without
    credentials: by default the Hub's own file CDNs for ``huggingface.co`` and nothing for any other
    endpoint.
    """

    name: str
    endpoint: str
    token_env: str | None = None
    max_file_bytes: int = 64 << 30
    redirect_hosts: tuple[str, ...] = ()
    kind: Literal["huggingface"] = "huggingface"


@dataclass(frozen=True, kw_only=True, slots=True)
class DirectoryRegistrySpec:
    """``[registries.NAME] kind = "directory"``: a local tree laid out as ``path/<repo>/<files>``."""

    name: str
    path: Path
    kind: Literal["directory"] = "directory"


@dataclass(frozen=True, kw_only=True, slots=True)
class UnpackBudgets:
    """What the tar layers of an OCI artifact may unpack to (``max_unpacked``, ``max_unpacked_files``,
    ``max_unpack_ratio`` of an oci registry in ``trust.toml``): bytes written over all its layers, entries
    in one layer, and a layer's tar stream over its compressed size. Each member is also capped at the
    registry's ``max_file_size``."""

    max_bytes: int = 64 << 30
    max_members: int = 100_000
    max_ratio: int = 200


@dataclass(frozen=True, kw_only=True, slots=True)
class OciRegistrySpec:
    """``[registries.NAME] kind = "oci"``: an OCI distribution registry (Harbor, Zot, distribution, ECR...).

    Models are pulled by manifest digest from ``endpoint``; ``namespace`` is prefixed to every entry's
    ``repo``. Credentials come from ``token_env`` (a bearer token) or the user's registry auth file
    (``REGISTRY_AUTH_FILE``, ``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``) and are sent to the
    endpoint only. ``max_file_bytes`` and ``redirect_hosts`` as for the Hub; ``unpack``: the budgets of
    its tar layers.
    """

    name: str
    endpoint: str
    namespace: str | None = None
    token_env: str | None = None
    max_file_bytes: int = 64 << 30
    redirect_hosts: tuple[str, ...] = ()
    kind: Literal["oci"] = "oci"
    unpack: UnpackBudgets = field(default_factory=UnpackBudgets)


@dataclass(frozen=True, kw_only=True, slots=True)
class MlflowRegistrySpec:
    """``[registries.NAME] kind = "mlflow"``: an MLflow tracking server's Model Registry at ``endpoint``.

    ``auth``: ``"basic"`` (``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``), ``"token"``
    (``MLFLOW_TRACKING_TOKEN``, sent as a bearer token) or ``"none"``; ``credentials``: a file holding
    them instead (``username = "..."`` and ``password = "..."``, or ``token = "..."``, in TOML; read only
    when a request needs it, refused when others may read it); credentials go to the endpoint's origin
    only, never across a redirect. Files come only from the server's own ``mlflow-artifacts``
    proxy, so there are no ``redirect_hosts``. ``max_file_bytes`` caps every download, on top of each
    file's pinned size.
    """

    name: str
    endpoint: str
    auth: Literal["none", "basic", "token"] = "none"
    credentials: Path | None = None
    max_file_bytes: int = 64 << 30
    redirect_hosts: tuple[str, ...] = ()
    kind: Literal["mlflow"] = "mlflow"


RegistrySpec = HuggingFaceRegistrySpec | DirectoryRegistrySpec | OciRegistrySpec | MlflowRegistrySpec


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluationRequirement:
    """``require_evaluation``: an attestation from ``signer`` over every file the model serves, meeting
    ``metrics`` (name -> (operator, limit)), measured on ``dataset`` (one of the entry's ``datasets``;
    when unset, any of them); found at ``path`` in the model's repository."""

    signer: str
    metrics: Mapping[str, tuple[str, float]] = field(default_factory=lambda: MappingProxyType({}))
    path: str = "evaluation.intoto.jsonl"
    dataset: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelEntry:
    """``[models."NAME"]``: where a name comes from and what its bytes must be."""

    name: str
    registry: str
    repo: str
    revision: str | None
    # relative path inside the repo -> "sha256:<hex>"
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    signer: str | None = None
    signature: str | None = None  # path of the signature file in the repo (when ``signer`` is set)
    # What the model card in `safeload bom` reports; informational, never used to decide a load.
    task: str | None = None
    datasets: tuple[str, ...] = ()  # names of [datasets] entries
    # safeload.transformers honours trust_remote_code=True only with this set and every code file pinned.
    allow_code: bool = False
    base_model: str | None = None  # the [models] entry this one was fine-tuned from
    # "dataset" for a [datasets] entry: fetched as the registry's dataset, filed apart in the store.
    kind: Literal["model", "dataset"] = "model"
    require_evaluation: EvaluationRequirement | None = None
    # MLflow entries: the version's ``source`` (its run folder or LoggedModel), cross-checked against the
    # server on every cold fetch; the flavor read from MLmodel at pin time; each file's size in bytes
    # (optional: when given, the listing must agree and each download is capped at it).
    source: str | None = None
    flavor: str | None = None
    sizes: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # MLflow: the alias the entry was pinned from (``models:/NAME@ALIAS`` loads this entry, never asking the
    # server where the alias points now), and the version's run id (checked on every cold fetch).
    alias: str | None = None
    run_id: str | None = None
    # MLflow sklearn: the types skops.io.load may build beyond skops's own safe set (never the model's list)
    trusted_types: tuple[str, ...] = ()

    @property
    def store_repo(self) -> str:
        """The repository path the store files this entry under (datasets apart from models)."""
        return f"datasets/{self.repo}" if self.kind == "dataset" else self.repo

    def store_revision(self) -> str:
        """The revision the store files this model under: the commit, or ``pins-<digest of the pins>``."""
        if self.source is not None:  # MLflow: a version number is a locator, the pins are the identity
            h = hashlib.sha256(f"{self.source}\0{self.flavor}\n".encode())
            for rel in sorted(self.files):
                h.update(f"{rel}\0{self.files[rel]}\0{self.sizes.get(rel)}\n".encode())
            return f"v{self.revision}-{h.hexdigest()[:24]}"
        if self.revision is not None:
            return self.revision
        h = hashlib.sha256()
        for rel in sorted(self.files):
            h.update(f"{rel}\0{self.files[rel]}\n".encode())
        return "pins-" + h.hexdigest()[:40]

    @property
    def signature_path(self) -> str:
        return self.signature or DEFAULT_SIGNATURE


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """A parsed ``trust.toml`` (or the built-in default)."""

    version: int = 1
    mode: Literal["enforce", "audit"] = "enforce"
    store: Path = field(default_factory=lambda: Path("~/.cache/safeload").expanduser())
    audit_log: Path | None = None
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    # local path (absolute, normalised) -> "sha256:<hex>"
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None  # the file it was read from; None for the built-in default
    registries: Mapping[str, RegistrySpec] = field(default_factory=lambda: MappingProxyType({}))
    signers: Mapping[str, Signer] = field(default_factory=lambda: MappingProxyType({}))
    models: Mapping[str, ModelEntry] = field(default_factory=lambda: MappingProxyType({}))
    require_signatures: bool = False
    datasets: Mapping[str, ModelEntry] = field(default_factory=lambda: MappingProxyType({}))


def default_policy() -> Policy:
    """The built-in policy: local files may be opened (always sandboxed); no remote name resolves."""
    return Policy()


def dotted(*parts: str) -> str:
    """``models."acme/sentiment".revision``: TOML's dotted-key spelling of a field's path."""
    out = []
    for p in parts:
        out.append(p if _BARE_KEY.match(p) else '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ".".join(out)


# ---------------------------------------------------------------------------------------------- parsing


class _Table:
    """A TOML table with typed getters that name the field's dotted path in every error."""

    def __init__(self, data: Mapping[str, object], path: tuple[str, ...]) -> None:
        self.data = data
        self.path = path

    def err(self, key: str | None, msg: str) -> PolicyError:
        field = dotted(*self.path, key) if key is not None else dotted(*self.path)
        return PolicyError(f"{field or '<top level>'}: {msg}", field=field or None)

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.err(key, f"unknown key; allowed here: {', '.join(sorted(allowed))}")

    def str_(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.err(key, "is required")
            return default
        if not isinstance(value, str) or not value:
            raise self.err(key, f"must be a non-empty string, got {value!r}")
        return value

    def req_str(self, key: str) -> str:
        value = self.str_(key, required=True)
        assert value is not None
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.data.get(key, default)
        if value == "" and key not in self.data:
            raise self.err(key, f"is required: one of {', '.join(repr(a) for a in allowed)}")
        if value not in allowed:
            raise self.err(key, f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        assert isinstance(value, str)
        return value

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, Mapping):
            raise self.err(key, f"must be a table, got {type(value).__name__}")
        return _Table(value, (*self.path, key))


def _resolve_path(raw: str, base: Path) -> Path:
    p = Path(os.path.expanduser(raw))
    return p if p.is_absolute() else base / p


def _check_repo(t: _Table, key: str, repo: str) -> None:
    parts = repo.split("/")
    if not all(_NAME_PART.match(p) and p not in {".", ".."} for p in parts) or len(parts) > 3:
        raise t.err(key, f"must be a repository id like 'org/name' (letters, digits, . _ -), got {repo!r}")


def _check_relpath(t: _Table, key: str, rel: str) -> None:
    """Refuse repo-relative file paths that could escape the model folder or name it ambiguously."""
    if not is_safe_relpath(rel):
        raise t.err(key, f"must be a relative path inside the repository without '..', got {rel!r}")


def _digest(t: _Table, key: str, value: object) -> str:
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise t.err(key, f"must be 'sha256:' followed by 64 lowercase hex digits, got {value!r}")
    return value


def _parse_sandbox(t: _Table) -> SandboxSettings:
    t.check_keys({"unpickler", "weakest_jail", "timeout", "memory", "max_output"})
    kw: dict[str, object] = {}
    kw["unpickler"] = t.choice("unpickler", ("inert", "execute"), "inert")
    kw["weakest_jail"] = t.choice("weakest_jail", ("full", "namespaces", "landlock"), "landlock")
    for key, attr, parse in (
        ("timeout", "timeout_s", parse_duration),
        ("memory", "memory_bytes", parse_size),
        ("max_output", "max_output_bytes", parse_size),
    ):
        if key in t.data:
            try:
                kw[attr] = parse(t.data[key])
            except ValueError as e:
                raise t.err(key, str(e)) from None
    return SandboxSettings(**kw)  # type: ignore[arg-type]


def _max_file_bytes(t: _Table) -> int | None:
    if "max_file_size" not in t.data:
        return None
    try:
        return parse_size(t.data["max_file_size"])
    except ValueError as e:
        raise t.err("max_file_size", str(e)) from None


_UNPACK_KEYS = ("max_unpacked", "max_unpacked_files", "max_unpack_ratio")


def _unpack_budgets(t: _Table) -> UnpackBudgets:
    budgets = UnpackBudgets()
    if "max_unpacked" in t.data:
        try:
            budgets = replace(budgets, max_bytes=parse_size(t.data["max_unpacked"]))
        except ValueError as e:
            raise t.err("max_unpacked", str(e)) from None
    for key, attr in (("max_unpacked_files", "max_members"), ("max_unpack_ratio", "max_ratio")):
        if key in t.data:
            value = t.data[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise t.err(key, f"must be a positive integer, got {value!r}")
            budgets = replace(budgets, **{attr: value})
    return budgets


# The keys a remote registry's table may hold besides ``kind``, ``endpoint`` and ``max_file_size``.
_REMOTE_KEYS: dict[str, frozenset[str]] = {
    "huggingface": frozenset({"token_env", "redirect_hosts"}),
    "oci": frozenset({"namespace", "token_env", "redirect_hosts", *_UNPACK_KEYS}),
    "mlflow": frozenset({"auth", "credentials"}),
}


def _parse_registry(t: _Table, name: str, base: Path) -> RegistrySpec:
    kind = t.choice("kind", ("huggingface", "directory", "oci", "mlflow"), "")
    if kind == "directory":
        t.check_keys({"kind", "path"})
        return DirectoryRegistrySpec(name=name, path=_resolve_path(t.req_str("path"), base))
    # What the remote kinds share is read once, the same way for each: the keys, the endpoint, the token
    # variable and redirect hosts where the kind has them, the download cap.
    keys = _REMOTE_KEYS[kind]
    t.check_keys({"kind", "endpoint", "max_file_size", *keys})
    endpoint = _endpoint(t)
    token_env = t.str_("token_env")
    redirect_hosts = _redirect_hosts(t, endpoint) if "redirect_hosts" in keys else ()
    spec: HuggingFaceRegistrySpec | OciRegistrySpec | MlflowRegistrySpec
    if kind == "mlflow":
        auth = t.choice("auth", ("none", "basic", "token"), "none")
        raw = t.str_("credentials")
        if raw is not None and auth == "none":
            raise t.err("credentials", 'needs auth = "basic" or "token" (which of its keys to send)')
        spec = MlflowRegistrySpec(
            name=name, endpoint=endpoint, auth=auth,  # type: ignore[arg-type]
            credentials=_resolve_path(raw, base) if raw is not None else None,
        )  # fmt: skip
    elif kind == "oci":
        namespace = t.str_("namespace")
        if namespace is not None:
            _check_repo(t, "namespace", namespace)
        spec = OciRegistrySpec(
            name=name, endpoint=endpoint, namespace=namespace, token_env=token_env,
            redirect_hosts=redirect_hosts, unpack=_unpack_budgets(t),
        )  # fmt: skip
    else:
        spec = HuggingFaceRegistrySpec(
            name=name, endpoint=endpoint, token_env=token_env, redirect_hosts=redirect_hosts
        )
    size = _max_file_bytes(t)
    return spec if size is None else replace(spec, max_file_bytes=size)


# Where huggingface.co sends file downloads (LFS and Xet-backed files over plain HTTP).
_HUB_CDNS = ("*.huggingface.co", "*.hf.co")
_REDIRECT_HOST = re.compile(
    r"(?:\*\.)?[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?(?::[0-9]{1,5})?|\[[0-9a-f:.]+\]:[0-9]{1,5}"
)


def _endpoint(t: _Table) -> str:
    endpoint = t.req_str("endpoint")
    parts = urlsplit(endpoint)
    ok = (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and parts.password is None
        and not parts.query
        and not parts.fragment
        and not any(c.isspace() for c in endpoint)
    )
    if ok:
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            ok = False
    if not ok:
        raise t.err(
            "endpoint",
            f"must be an http(s) URL like 'https://huggingface.co' (no credentials, query or fragment), got "
            f"{endpoint!r}",
        )
    return endpoint.rstrip("/")


def _redirect_hosts(t: _Table, endpoint: str) -> tuple[str, ...]:
    raw = t.data.get("redirect_hosts")
    if raw is None:
        return _HUB_CDNS if (urlsplit(endpoint).hostname or "") == "huggingface.co" else ()
    if not isinstance(raw, list) or not all(isinstance(h, str) for h in raw):
        raise t.err("redirect_hosts", f"must be a list of host names, got {raw!r}")
    for host in raw:
        if not _REDIRECT_HOST.fullmatch(host.lower()):
            raise t.err(
                "redirect_hosts",
                f"{host!r} is not a host, host:port or *.domain (no scheme, path or bare '*')",
            )
    return tuple(h.lower() for h in raw)


def _parse_signer(t: _Table, name: str, base: Path) -> Signer:
    kind = t.choice("kind", ("key", "certificate", "sigstore"), "")
    if kind == "key":
        t.check_keys({"kind", "public_key"})
        return KeySigner(name=name, public_key=_resolve_path(t.req_str("public_key"), base))
    if kind == "certificate":
        t.check_keys({"kind", "chain", "leaf_sha256", "leaf_subject"})
        chain = t.data.get("chain")
        if not isinstance(chain, list) or not chain or not all(isinstance(c, str) and c for c in chain):
            raise t.err("chain", "must be a non-empty list of PEM certificate paths (never the web roots)")
        leaf_sha = t.str_("leaf_sha256")
        if leaf_sha is not None:
            _digest(t, "leaf_sha256", leaf_sha)
        leaf_subject = t.str_("leaf_subject")
        if leaf_sha is None and leaf_subject is None:
            raise t.err(None, "a certificate signer needs 'leaf_sha256' or 'leaf_subject' to pin the signer")
        return CertificateSigner(
            name=name,
            chain=tuple(_resolve_path(c, base) for c in chain),
            leaf_sha256=leaf_sha,
            leaf_subject=leaf_subject,
        )
    t.check_keys({"kind", "identity", "issuer", "trusted_root", "trusted_root_sha256"})
    root_sha = t.str_("trusted_root_sha256")
    if root_sha is not None:
        _digest(t, "trusted_root_sha256", root_sha)
    issuer = t.req_str("issuer")
    if not issuer.startswith("https://"):
        raise t.err("issuer", f"must be the OIDC issuer URL (https://...), got {issuer!r}")
    return SigstoreSigner(
        name=name,
        identity=t.req_str("identity"),
        issuer=issuer,
        trusted_root=_resolve_path(t.req_str("trusted_root"), base),
        trusted_root_sha256=root_sha,
    )


def _parse_model(
    t: _Table,
    name: str,
    registries: Mapping[str, RegistrySpec],
    signers: Mapping[str, Signer],
    require_signatures: bool,
    *,
    kind: Literal["model", "dataset"] = "model",
) -> ModelEntry:
    common = {"registry", "repo", "revision", "signer", "signature", "files"}
    mlflow_keys = {"source", "flavor", "sizes", "alias", "run_id", "trusted_types"}
    is_mlflow = isinstance(registries.get(str(t.data.get("registry"))), MlflowRegistrySpec)
    t.check_keys(
        common if kind == "dataset"
        else common | {"task", "datasets", "allow_code", "base_model", "require_evaluation"}
        | (mlflow_keys if is_mlflow else set())
    )
    base_model = t.str_("base_model")
    require_evaluation = None
    if "require_evaluation" in t.data:
        require_evaluation = _parse_evaluation(t.table("require_evaluation"), signers)
    allow_code = t.data.get("allow_code", False)
    if not isinstance(allow_code, bool):
        raise t.err("allow_code", f"must be true or false, got {allow_code!r}")
    task = t.str_("task")
    datasets = t.data.get("datasets", [])
    if not isinstance(datasets, list) or not all(isinstance(d, str) and d for d in datasets):
        raise t.err("datasets", f"must be a list of dataset names, got {datasets!r}")
    registry = t.req_str("registry")
    if registry not in registries:
        known = ", ".join(sorted(registries)) or "none defined"
        raise t.err("registry", f"names no [registries.{registry}] table (known: {known})")
    spec = registries[registry]
    repo = t.str_("repo") or name
    _check_repo(t, "repo", repo)
    revision = t.data.get("revision")
    if spec.kind == "oci":
        if revision is None:
            raise t.err("revision", "is required: the manifest digest 'sha256:<64 hex>' (tags can move)")
        if not isinstance(revision, str) or not _DIGEST.match(revision):
            raise t.err(
                "revision",
                f"must be a manifest digest 'sha256:<64 hex>' (tags can move), got {revision!r}; "
                "safeload pin oci://HOST/REPO:TAG --resolve prints the digest a tag points at",
            )
    elif spec.kind == "mlflow":
        if not isinstance(revision, str) or not _VERSION.match(revision):
            raise t.err(
                "revision",
                f"must be an MLflow model version number (digits), got {revision!r}; aliases move, so "
                "`safeload pin mlflow://REGISTRY/NAME/VERSION` pins the version itself",
            )
    elif revision is None:
        if spec.kind == "huggingface":
            raise t.err("revision", "is required: a 40-hex commit id (branches and tags can move)")
    elif not isinstance(revision, str) or not _COMMIT.match(revision):
        raise t.err("revision", f"must be a 40-hex commit id, got {revision!r}")
    signer = t.str_("signer")
    if signer is not None and signer not in signers:
        known = ", ".join(sorted(signers)) or "none defined"
        raise t.err("signer", f"names no [signers.{signer}] table (known: {known})")
    if signer is None and require_signatures:
        raise t.err("signer", "is required because require_signatures = true")
    signature = t.str_("signature")
    if signature is not None:
        if signer is None:
            raise t.err("signature", "only makes sense with 'signer'")
        _check_relpath(t, "signature", signature)
    ft = t.table("files")
    files: dict[str, str] = {}
    for rel, digest in ft.data.items():
        _check_relpath(ft, rel, rel)
        files[rel] = _digest(ft, rel, digest)
    if not files and signer is None:
        raise t.err("files", "must pin at least one file ('path' = 'sha256:...'), or name a 'signer'")
    source = flavor = alias = run_id = None
    trusted_types: tuple[str, ...] = ()
    sizes: dict[str, int] = {}
    if spec.kind == "mlflow":
        if kind == "dataset":
            raise t.err("registry", "an mlflow registry serves models, not datasets")
        source = t.req_str("source")
        if any(c.isspace() or ord(c) < 32 for c in source) or len(source) > 1024:
            raise t.err("source", f"must be the version's source as the server reports it, got {source!r}")
        flavor = t.req_str("flavor")
        alias = t.str_("alias")
        if alias is not None and (not _ALIAS.match(alias) or _VERSION.match(alias)):
            raise t.err("alias", f"must be an MLflow alias (letters, digits, '_' and '-'), got {alias!r}")
        run_id = t.str_("run_id")
        if run_id is not None and not _RUN_ID.match(run_id):
            raise t.err("run_id", f"must be the version's run id as the server reports it, got {run_id!r}")
        trusted_types = _trusted_types(t)
        zt = t.table("sizes")
        for rel, size in zt.data.items():
            if rel not in files:
                raise zt.err(rel, "names a file that 'files' does not pin")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise zt.err(rel, f"must be the file's size in bytes, got {size!r}")
            sizes[rel] = size
    sig_rel = signature or DEFAULT_SIGNATURE
    if signer is not None and sig_rel in files:
        raise t.err("signature", f"the signature file {sig_rel!r} cannot also be a pinned model file")
    return ModelEntry(
        name=name,
        registry=registry,
        repo=repo,
        revision=revision,
        files=MappingProxyType(files),
        signer=signer,
        signature=signature,
        task=task,
        datasets=tuple(datasets),
        allow_code=allow_code,
        base_model=base_model,
        kind=kind,
        require_evaluation=require_evaluation,
        source=source,
        flavor=flavor,
        sizes=MappingProxyType(sizes),
        alias=alias,
        run_id=run_id,
        trusted_types=trusted_types,
    )


def _trusted_types(t: _Table) -> tuple[str, ...]:
    """``trusted_types``: dotted type names (``"sklearn.tree._tree.Tree"``), each once."""
    raw = t.data.get("trusted_types", [])
    if not isinstance(raw, list) or not all(isinstance(n, str) and _TYPE_NAME.match(n) for n in raw):
        raise t.err(
            "trusted_types",
            f'must be a list of dotted type names such as "sklearn.tree._tree.Tree", got {raw!r}',
        )
    if len(set(raw)) != len(raw):
        raise t.err("trusted_types", "names a type twice")
    return tuple(raw)


def _parse_evaluation(t: _Table, signers: Mapping[str, Signer]) -> EvaluationRequirement:
    from safeload._trust.attestation import parse_threshold

    t.check_keys({"signer", "metrics", "path", "dataset"})
    signer = t.req_str("signer")
    dataset = t.str_("dataset")
    if signer not in signers:
        known = ", ".join(sorted(signers)) or "none defined"
        raise t.err("signer", f"names no [signers.{signer}] table (known: {known})")
    path = t.str_("path") or "evaluation.intoto.jsonl"
    _check_relpath(t, "path", path)
    mt = t.table("metrics")
    metrics: dict[str, tuple[str, float]] = {}
    for name, text in mt.data.items():
        try:
            metrics[name] = parse_threshold(str(text) if isinstance(text, str) else repr(text))
        except ValueError as exc:
            raise mt.err(name, str(exc)) from None
    return EvaluationRequirement(signer=signer, metrics=MappingProxyType(metrics), path=path, dataset=dataset)


def parse_policy(text: str, *, source: Path | None = None) -> Policy:
    """Parse ``trust.toml`` text. ``source`` (the file's path) anchors relative paths and error messages.

    Raises:
        PolicyError: the text is not TOML or a field is malformed; the message names the dotted path.
    """
    where = f"{source}: " if source is not None else ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{where}not valid TOML: {e}") from None
    base = source.resolve().parent if source is not None else Path.cwd()
    top = _Table(data, ())
    try:
        return _parse(top, base, source)
    except PolicyError as e:
        if where:
            raise PolicyError(f"{where}{e}", field=e.field) from None
        raise


def _parse(top: _Table, base: Path, source: Path | None) -> Policy:
    top.check_keys(
        {"version", "mode", "store", "audit_log", "require_signatures", "sandbox", "registries", "signers",
         "models", "datasets", "files"}
    )  # fmt: skip
    version = top.data.get("version")
    if version is None:
        raise top.err("version", f"is required; this safeload reads version {SUPPORTED_VERSIONS[-1]}")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise top.err("version", f"must be one of {list(SUPPORTED_VERSIONS)}, got {version!r}")
    mode = top.choice("mode", ("enforce", "audit"), "enforce")
    store_raw = top.str_("store")
    store = _resolve_path(store_raw, base) if store_raw else Path("~/.cache/safeload").expanduser()
    audit_raw = top.str_("audit_log")
    audit_log = _resolve_path(audit_raw, base) if audit_raw else None
    require_signatures = top.data.get("require_signatures", False)
    if not isinstance(require_signatures, bool):
        raise top.err("require_signatures", f"must be true or false, got {require_signatures!r}")

    sandbox = _parse_sandbox(top.table("sandbox"))

    registries: dict[str, RegistrySpec] = {}
    rt = top.table("registries")
    for name in rt.data:
        registries[name] = _parse_registry(rt.table(name), name, base)

    signers: dict[str, Signer] = {}
    st = top.table("signers")
    for name in st.data:
        signers[name] = _parse_signer(st.table(name), name, base)

    models: dict[str, ModelEntry] = {}
    mt = top.table("models")
    for name in mt.data:
        models[name] = _parse_model(mt.table(name), name, registries, signers, require_signatures)

    datasets: dict[str, ModelEntry] = {}
    dt = top.table("datasets")
    for name in dt.data:
        table = dt.table(name)
        datasets[name] = _parse_model(table, name, registries, signers, require_signatures, kind="dataset")
    for name, entry in models.items():
        for ref in entry.datasets:
            if ref not in datasets:
                known = ", ".join(sorted(datasets)) or "none defined"
                raise mt.table(name).err(
                    "datasets",
                    f"names {ref!r}, which is no [datasets] entry (known: {known}); pin it with "
                    f"`safeload pin hf://datasets/{ref}@<commit>`",
                )
        req = entry.require_evaluation
        if req is not None and req.dataset is not None and req.dataset not in entry.datasets:
            raise mt.table(name).table("require_evaluation").err(
                "dataset",
                f"names {req.dataset!r}, which is not among the model's datasets "
                f"({', '.join(entry.datasets) or 'none'}); add it to the model's datasets",
            )
        if entry.base_model is not None and (entry.base_model not in models or entry.base_model == name):
            raise mt.table(name).err(
                "base_model",
                f"names {entry.base_model!r}, which is no other [models] entry; pin the base model",
            )

    files: dict[str, str] = {}
    ft = top.table("files")
    for raw, digest in ft.data.items():
        if not raw:
            raise ft.err(raw, "must be a file path")
        key = os.path.normpath(_resolve_path(raw, base))
        files[key] = _digest(ft, raw, digest)

    return Policy(
        version=int(version),
        mode=mode,  # type: ignore[arg-type]
        store=store,
        audit_log=audit_log,
        sandbox=sandbox,
        files=MappingProxyType(files),
        source=source,
        registries=MappingProxyType(registries),
        signers=MappingProxyType(signers),
        models=MappingProxyType(models),
        require_signatures=require_signatures,
        datasets=MappingProxyType(datasets),
    )


def _read(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: cannot read the policy file: {e}") from None
    return parse_policy(text, source=path.absolute())


def discover_policy_path() -> Path | None:
    """The policy file :func:`load_policy` would read with no argument, or None for the default."""
    env = os.environ.get("SAFELOAD_POLICY")
    if env:
        return Path(env).expanduser()
    for candidate in (Path("trust.toml"), Path("~/.config/safeload/trust.toml").expanduser()):
        if candidate.is_file():
            return candidate
    return None


def load_policy(policy: Policy | str | os.PathLike[str] | None = None) -> Policy:
    """The policy to apply: ``policy`` itself, the file it names, or the discovered one.

    Discovery order: the argument, ``$SAFELOAD_POLICY``, ``./trust.toml``, ``~/.config/safeload/trust.toml``,
    then the built-in default (local files only, always sandboxed).

    Raises:
        PolicyError: the named or discovered file is missing, unreadable or malformed.
    """
    if isinstance(policy, Policy):
        return policy
    if policy is not None:
        return _read(Path(os.fspath(policy)).expanduser())
    path = discover_policy_path()
    return _read(path) if path is not None else default_policy()
