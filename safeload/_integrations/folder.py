"""From a model name or a local path to a folder transformers may read.

A name resolves only through the policy (``safeload._trust.resolve.fetch_model``): the verified, read-only
folder
in the store holds only pinned files. A local folder is read in place; files pinned in ``[files]`` are
checked. The folder is then inspected before transformers sees it:

- config keys that redirect weight loading, ``auto_map``/``custom_pipelines`` entries naming another
  repository, and adapters are refused;
- remote code is allowed only when the policy entry says ``allow_code`` and every code file is pinned;
- ``pytorch_model*.bin`` weights are converted to safetensors in the jail (cached in the store by the
  source's sha256) and every other pickle-family file is left out.

When anything was converted or left out, transformers reads a derived folder in the store made of
symlinks to the verified files plus the converted weights; otherwise it reads the verified folder itself.
A derived folder is built once, by a process that may write the store (``safeload prefetch`` as the
store's owner, or the first load), readable by every user who may enter the store; a reader finding it
intact writes nothing, and a reader that would have to build it but may not write the store gets
:class:`~safeload.errors.StoreAccessError`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import threading
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeload._loading.convert import (
    cached_conversion,
    converted_index,
    converted_path,
    safetensors_name,
    sha256_file,
)
from safeload._trust.local_files import open_verified_local
from safeload._trust.resolve import fetch_model
from safeload._trust.store import Store, unsafe_reason, write_shared
from safeload.errors import IntegrityError, UnsafeContentError, UnsafeStoreError, UntrustedSourceError
from safeload.policy import Policy

__all__ = ["Prepared", "prepare"]

_DERIVED_VERSION = "1"
# Suffixes of files that are pickles (or archives of pickles) by convention; content is checked too.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".sav")
_MAX_JSON = 16 << 20
_CODE_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class Prepared:
    """A folder ready for transformers' ``from_pretrained``, and what the policy allows for it."""

    folder: Path
    allow_code: bool
    revision: str | None = None
    excluded: tuple[str, ...] = ()
    converted: Mapping[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class _Source:
    folder: Path
    files: Mapping[str, str | None]  # relpath -> "sha256:<hex>" when verified/pinned
    allow_code: bool
    revision: str | None
    from_store: bool


def _is_pickle_family(path: Path) -> bool:
    """Whether a file is (or may be) a pickle or an archive of pickles, by name or by content."""
    if path.name.endswith(_PICKLE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith((".pkl", "/data", "version")) for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return len(head) >= 262 and head[257:262] == b"ustar"


def _is_weight_bin(name: str) -> bool:
    return name.startswith(("pytorch_model", "diffusion_pytorch_model")) and name.endswith(".bin")


def _is_adapter_bin(name: str) -> bool:
    return name.startswith("adapter_model") and name.endswith(".bin")


def _is_weight_bin_index(name: str) -> bool:
    stems = ("pytorch_model.bin.index", "diffusion_pytorch_model.bin.index")
    return name.startswith(stems) and name.endswith(".json")


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > _MAX_JSON:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _walk(folder: Path) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            p = Path(root) / n
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = None
    return out


def _warm_jail_for(pins: Mapping[str, str], policy: Policy) -> None:
    """Start the jail's one-time checks on a spare thread when a pinned ``.bin`` will need converting.

    They then overlap the store's verification of the files instead of following it (on the first load
    of a process). Nothing waits for the thread: the conversion runs the same checks itself, under the
    launcher's own locking, and reports any failure with its own error.
    """
    for rel, digest in pins.items():
        base = rel.rsplit("/", 1)[-1]
        if (
            _is_weight_bin(base)
            and _sibling(rel, safetensors_name(base)) not in pins  # else transformers reads that one
            and not converted_path(policy, digest).exists()
        ):
            threading.Thread(target=_warm_jail, name="safeload-jail-warmup", daemon=True).start()
            return


def _warm_jail() -> None:
    with contextlib.suppress(Exception):
        import safeload._loading.loader  # noqa: F401  (the conversion's next import; imported here, off the clock)
        from safeload._jail.launcher import prepare as prepare_jail

        prepare_jail()


def _policy_source(name: str, policy: Policy) -> _Source:
    fetched = fetch_model(name, policy=policy)
    entry = fetched.entry
    return _Source(
        folder=Path(fetched.folder),
        files=dict(fetched.files),
        allow_code=bool(getattr(entry, "allow_code", False)),
        revision=getattr(entry, "revision", None),
        from_store=True,
    )


def _local_source(path: Path, policy: Policy) -> _Source:
    folder = path.resolve()
    files = _walk(folder)
    pins = {str(Path(k).expanduser().resolve()): v for k, v in policy.files.items()}
    for rel in list(files):
        pin = pins.get(str(folder / rel))
        if pin is None:
            continue
        if _is_weight_bin(rel.rsplit("/", 1)[-1]):
            # The conversion loads it from its verified copy in the store anyway; verifying it that way
            # hashes it once per change of the file, not on every call (and not twice on the first).
            verified = open_verified_local(folder / rel, policy)
            if verified is not None:
                digest = verified.digest
                files[rel] = digest if digest.startswith("sha256:") else "sha256:" + digest
                continue
        actual = "sha256:" + sha256_file(folder / rel)
        if actual != pin.lower():
            raise IntegrityError(
                f"{folder / rel}: sha256 is {actual} but trust.toml [files] pins {pin}; "
                "restore the pinned file or update the pin if the change is intended",
                path=str(folder / rel), expected=pin, actual=actual,
            )
        files[rel] = pin
    return _Source(folder=folder, files=files, allow_code=False, revision=None, from_store=False)


def _code_refs(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _code_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _code_refs(v)


def _check_configs(src: _Source, *, want_code: bool, adapter: bool = False) -> None:
    code_modules: set[str] = set()
    for rel in src.files:
        # auto_map and weight redirects live in the config files; tokenizer.json and friends are skipped.
        if not rel.endswith("config.json") or rel.count("/") > 1:
            continue
        data = _read_json(src.folder / rel)
        if not isinstance(data, dict):
            continue
        weights = data.get("transformers_weights")
        if weights is not None and (
            not isinstance(weights, str)
            or not weights.endswith(".safetensors")
            or weights.startswith(("/", "\\"))
            or ".." in Path(weights).parts
        ):
            raise UnsafeContentError(
                f"{src.folder / rel}: 'transformers_weights' = {weights!r} redirects weight loading away "
                "from a safetensors file in the model folder, which would make transformers unpickle it "
                "in this process; remove the key from config.json"
            )
        refs = list(_code_refs(data.get("auto_map"))) + [
            r for task in _code_refs_tasks(data.get("custom_pipelines")) for r in task
        ]
        for ref in refs:
            if "--" in ref:
                raise UntrustedSourceError(
                    f"{src.folder / rel}: auto_map entry {ref!r} points at code in another repository; "
                    "safeload loads code only from the pinned model itself. Vendor the code into the "
                    "model's repository and pin it, or load a model that needs no remote code"
                )
            module = ref.rsplit(".", 1)[0]
            if _CODE_MODULE.match(module):
                code_modules.add(module.replace(".", "/") + ".py")
    if "adapter_config.json" in src.files and not adapter:
        raise UntrustedSourceError(
            f"{src.folder}: adapter_config.json makes transformers load a base model named inside the "
            "adapter; load the base model through safeload.transformers and apply the adapter with peft"
        )
    for rel in src.files:
        if rel.endswith(".safetensors.index.json"):
            _check_safetensors_index(src.folder / rel)
    if want_code:
        _check_code(src, code_modules)


def _code_refs_tasks(value: object) -> Iterable[list[str]]:
    if isinstance(value, dict):
        for task in value.values():
            if isinstance(task, dict):
                yield list(_code_refs(task.get("impl")))


def _check_safetensors_index(index: Path) -> None:
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        return
    for shard in set(weight_map.values()):
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or "/" in shard or "\\" in shard:
            raise UnsafeContentError(
                f"{index}: shard {shard!r} is not a safetensors file next to the index; transformers "
                "would unpickle it in this process. Fix the index or convert the shard"
            )


def _check_code(src: _Source, modules: set[str]) -> None:
    if not src.from_store:
        raise UntrustedSourceError(
            f"trust_remote_code=True for the local folder {src.folder}: safeload runs model code only for "
            "models pinned in trust.toml with allow_code = true; pin the model under [models] instead"
        )
    if not src.allow_code:
        raise UntrustedSourceError(
            f"trust_remote_code=True, but the trust.toml entry for {src.folder.name} does not allow code; "
            "add allow_code = true to its [models] entry after reviewing the code files it pins"
        )
    code = {rel for rel in src.files if rel.endswith(".py")} | modules
    unpinned = sorted(rel for rel in code if not src.files.get(rel))
    if unpinned:
        raise UntrustedSourceError(
            f"trust_remote_code=True, but these code files are not pinned by hash: {', '.join(unpinned)}; "
            "add them to the model's files in trust.toml (`safeload pin` writes every file)"
        )


def _derived_key(src: _Source, kept: Mapping[str, str | None], weights: bool) -> str:
    entries = []
    for rel in sorted(kept):
        ident = kept[rel]
        if ident is None:
            st = (src.folder / rel).stat()
            ident = f"{st.st_size}:{st.st_mtime_ns}"
        entries.append([rel, ident])
    material = json.dumps(
        {"v": _DERIVED_VERSION, "folder": str(src.folder), "weights": weights, "entries": entries},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:40]


def prepare(
    name_or_path: str | os.PathLike[str],
    *,
    weights: bool,
    trust_remote_code: bool,
    revision: str | None = None,
    policy: Policy | None = None,
    adapter: bool = False,
) -> Prepared:
    """Resolve, verify, inspect and (for ``weights``) convert a model so transformers can read it safely.

    ``adapter``: the folder is a peft adapter, read by peft (not transformers): its
    ``adapter_config.json`` is allowed and ``adapter_model.bin`` is converted like a weight file.

    Raises:
        UntrustedSourceError: the name is not in the policy, remote code is not allowed, an ``auto_map``
            entry or an adapter points elsewhere, or ``revision`` differs from the pinned one.
        UnsafeContentError: a config redirects weight loading to a non-safetensors file.
        IntegrityError, SignatureError: verification failed.
        SandboxError, UnsupportedFormatError: converting ``.bin`` weights failed.
    """
    from safeload.policy import load_policy

    pol = policy if policy is not None else load_policy()
    name = os.fspath(name_or_path)
    models: Mapping[str, Any] = getattr(pol, "models", {})
    if name in models or not os.path.isdir(name):
        if weights and name in models:
            _warm_jail_for(models[name].files, pol)
        src = _policy_source(name, pol)
        if revision is not None and revision != src.revision:
            raise UntrustedSourceError(
                f"{name}: revision {revision!r} was asked for, but trust.toml pins "
                f"{src.revision or 'no revision (directory registry)'}; "
                "drop the revision argument or pin the revision you want with `safeload pin`"
            )
    else:
        src = _local_source(Path(name), pol)
    _check_configs(src, want_code=trust_remote_code, adapter=adapter)
    allow_code = trust_remote_code  # _check_configs raised if the policy does not allow it

    kept: dict[str, str | None] = {}
    excluded: list[str] = []
    bins: list[str] = []
    indexes: list[str] = []
    for rel, digest in src.files.items():
        base = rel.rsplit("/", 1)[-1]
        if _is_weight_bin_index(base):
            indexes.append(rel)
            continue
        if _is_pickle_family(src.folder / rel):
            if _is_weight_bin(base) or (adapter and _is_adapter_bin(base)):
                bins.append(rel)
            else:
                excluded.append(rel)
            continue
        kept[rel] = digest
    if not bins and not indexes and not excluded:
        return Prepared(folder=src.folder, allow_code=allow_code, revision=src.revision)

    converted: dict[str, Path] = {}
    index_docs: dict[str, dict[str, Any]] = {}
    if weights:
        present = set(src.files)
        sharded: set[str] = set()
        for rel in indexes:
            target = _sibling(rel, safetensors_name(rel.rsplit("/", 1)[-1]))
            doc = converted_index(src.folder / rel)  # validates shard names before anything is opened
            source_map = json.loads((src.folder / rel).read_text(encoding="utf-8"))["weight_map"]
            shards = {_sibling(rel, b) for b in source_map.values()}
            missing = sorted(shards - present)
            if missing:
                raise UntrustedSourceError(
                    f"{src.folder / rel} names shards that are not among the model's pinned files: "
                    f"{', '.join(missing)}; pin them in trust.toml (`safeload pin` writes every file)"
                )
            sharded |= shards
            if target in present:
                continue
            index_docs[target] = doc
            for bin_rel in sorted(shards):
                out_rel = _sibling(bin_rel, safetensors_name(bin_rel.rsplit("/", 1)[-1]))
                converted[out_rel] = cached_conversion(
                    src.folder / bin_rel, policy=pol, sha256=src.files.get(bin_rel)
                )
        for rel in bins:
            target = _sibling(rel, safetensors_name(rel.rsplit("/", 1)[-1]))
            if target in present or rel in sharded:
                continue
            converted[target] = cached_conversion(src.folder / rel, policy=pol, sha256=src.files.get(rel))
    excluded.extend(bins)
    excluded.extend(indexes)

    store = Path(pol.store).expanduser()
    ident = dict(kept)
    for rel, path in converted.items():
        ident[rel] = "converted:" + path.name
    folder = _build_derived(store, _derived_key(src, ident, weights), src, kept, converted, index_docs)
    return Prepared(
        folder=folder,
        allow_code=allow_code,
        revision=src.revision,
        excluded=tuple(sorted(excluded)),
        converted=converted,
    )


def _sibling(rel: str, name: str) -> str:
    return rel.rsplit("/", 1)[0] + "/" + name if "/" in rel else name


def _build_derived(
    store: Path,
    key: str,
    src: _Source,
    kept: Mapping[str, str | None],
    converted: Mapping[str, Path],
    index_docs: Mapping[str, Mapping[str, Any]],
) -> Path:
    """The derived folder ``derived/<key>`` in the store, built unless an intact one is there.

    Raises:
        UnsafeStoreError: the folder, or one leading to it, could be changed by another user.
        StoreAccessError: the folder must be built (or rebuilt) and this process may not write the store.
    """
    owner = Store(store)
    root = owner.root / "derived"
    final = root / key
    expected: dict[str, str | None] = {rel: os.path.abspath(src.folder / rel) for rel in kept}
    expected.update({rel: os.path.abspath(path) for rel, path in converted.items()})
    expected.update({rel: None for rel in index_docs})
    st = owner.lstat_inside(final)
    if st is not None and stat.S_ISDIR(st.st_mode) and _derived_intact(final, expected, index_docs):
        return final
    try:
        return _write_derived(root, final, src, kept, converted, index_docs, stale=st is not None)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise owner.access_error(Path(e.filename or final), e) from None
        raise


def _write_derived(
    root: Path,
    final: Path,
    src: _Source,
    kept: Mapping[str, str | None],
    converted: Mapping[str, Path],
    index_docs: Mapping[str, Mapping[str, Any]],
    *,
    stale: bool,
) -> Path:
    if not root.is_dir():
        root.mkdir(mode=0o755)
        root.chmod(0o755)
    if stale:
        # Someone changed the folder after it was built: set it aside and build it again.
        aside = root / f".stale-{secrets.token_hex(8)}"
        with contextlib.suppress(FileNotFoundError):  # another process set it aside first
            os.rename(final, aside)
        shutil.rmtree(aside, ignore_errors=True)
    tmp = root / f".build-{secrets.token_hex(8)}"
    tmp.mkdir(mode=0o700)
    try:
        for rel in kept:
            _link(src.folder / rel, tmp / rel)
        for rel, path in converted.items():
            _link(path, tmp / rel)
        for rel, doc in index_docs.items():
            write_shared(tmp / rel, json.dumps(doc, indent=2, sort_keys=True).encode())
        # Readable by every user who may enter the store, whatever the umask; built private until done.
        for dirpath, _dirs, _names in os.walk(tmp):
            os.chmod(dirpath, 0o755)  # noqa: S103 - readable, not writable, by others
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process built the same folder first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _derived_intact(
    folder: Path, expected: Mapping[str, str | None], index_docs: Mapping[str, Mapping[str, Any]]
) -> bool:
    """Whether a derived folder still holds exactly the links and indexes it was built with.

    Raises:
        UnsafeStoreError: a folder or index in it could be changed by a user other than the caller and root.
    """
    try:
        present: set[str] = set()
        for dirpath, dirs, names in os.walk(folder):
            for d in dirs:
                _refuse(Path(dirpath) / d)
            for n in names:
                present.add((Path(dirpath) / n).relative_to(folder).as_posix())
        if present != set(expected):
            return False
        for rel, target in expected.items():
            if target is not None:
                if os.readlink(folder / rel) != target:
                    return False
            elif not (folder / rel).is_file() or (folder / rel).is_symlink():
                return False
            else:
                _refuse(folder / rel)
                if json.loads((folder / rel).read_text(encoding="utf-8")) != index_docs[rel]:
                    return False
    except (OSError, ValueError):
        return False
    return True


def _refuse(path: Path) -> None:
    reason = unsafe_reason(path, os.lstat(path))
    if reason is not None:
        raise UnsafeStoreError(reason + "; nothing was loaded from the store")


def _link(target: Path, at: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.abspath(target), at)
