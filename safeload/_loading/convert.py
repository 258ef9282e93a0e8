"""Pickle checkpoints to safetensors, with the pickle opened only inside the jail.

The checkpoint is read as :func:`safeload.load` reads it (in the jail, inert unpickler); the host then
writes the safetensors file itself: the header, then each tensor's bytes, copied kernel-side
(``copy_file_range``) from the verified source file when they lie there uncompressed, else from memory.
Tensors that share storage (tied embeddings, views) are written as separate copies: ``safetensors``
refuses shared storage, and copying keeps every name the checkpoint had, so transformers can re-tie them
whatever the model's tying rules are.

:func:`cached_conversion` keeps the result in the store under the source's sha256, so a checkpoint is
converted once per machine however many folders or names point at it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from safeload._files import create_beside
from safeload._sandbox.worker.protocol import SAFETENSORS_DTYPES
from safeload._trust.hashing import hash_fd
from safeload._trust.store import Store, makedirs_shared, write_shared
from safeload.errors import IntegrityError, UnsafeContentError, UnsupportedFormatError

if TYPE_CHECKING:
    import torch

    from safeload.policy import Policy

__all__ = [
    "Conversion",
    "ShardedConversion",
    "cached_conversion",
    "convert_checkpoint",
    "convert_file",
    "convert_sharded",
    "converted_index",
    "converted_path",
    "safetensors_name",
    "sha256_file",
]

_CHUNK = 1 << 20
_RACY_NS = 1_000_000_000
_log = logging.getLogger("safeload._loading.convert")
_SHA_RE = re.compile(r"^(sha256:)?([0-9a-f]{64})$")
# Common wrappers around a state dict (Lightning, many training scripts).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")


@dataclass(frozen=True)
class ShardedConversion:
    """The result of converting a sharded ``.bin`` checkpoint: the new index and its shard files."""

    index: Path
    shards: Mapping[str, Path]  # safetensors shard name -> path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def safetensors_name(bin_name: str) -> str:
    """The name transformers looks for once a ``.bin`` weight file is converted.

    ``pytorch_model.bin`` -> ``model.safetensors``, ``pytorch_model-00001-of-00002.bin`` ->
    ``model-00001-of-00002.safetensors``, ``pytorch_model.bin.index.json`` ->
    ``model.safetensors.index.json`` (variants such as ``.fp16`` are kept in place); diffusers keeps its
    own stem: ``diffusion_pytorch_model.bin`` -> ``diffusion_pytorch_model.safetensors``.
    """
    if bin_name.startswith("diffusion_pytorch_model"):
        base = bin_name
    else:
        base = bin_name.replace("pytorch_model", "model", 1)
    if base.endswith(".bin"):
        return base[: -len(".bin")] + ".safetensors"
    return base.replace(".bin.", ".safetensors.", 1)


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_checkpoint` wrote: the output file, the tensor names in it, and the entries of
    the checkpoint that were left out (dotted key paths: sibling entries of the state dict and its
    non-tensor values, such as ``config_dict`` or ``epoch``)."""

    output: Path
    tensors: tuple[str, ...]
    left_out: tuple[str, ...]


def _key_text(key: object) -> str:
    return key if isinstance(key, str) else repr(key)


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{_key_text(key)}" if prefix else _key_text(key)


def _as_tensor(value: object) -> torch.Tensor | None:
    """``value`` as a tensor to write: a tensor, or a numeric numpy array (a ``.npz`` archive's arrays)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach()
    if type(value).__module__ == "numpy" and type(value).__name__ in ("ndarray", "memmap"):
        import warnings

        import numpy as np

        assert isinstance(value, np.ndarray)
        if value.dtype.kind not in "biuf" or not value.dtype.isnative:
            return None
        with warnings.catch_warnings():  # read-only arrays mapped from the verified file are never written
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(value)
    return None


def _tensors_of(value: object) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping):
        return {}
    found: dict[str, torch.Tensor] = {}
    for k, v in value.items():
        t = _as_tensor(v) if isinstance(k, str) else None
        if t is not None:
            found[k] = t
    return found


def _candidates(obj: object, prefix: str = "", depth: int = 4) -> list[str]:
    """Dotted key paths under ``obj`` whose value is a mapping holding tensors (what ``--key`` accepts)."""
    if not isinstance(obj, Mapping) or depth == 0:
        return []
    found: list[str] = []
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Mapping):
            continue
        path = _join(prefix, k)
        if _tensors_of(v):
            found.append(path)
        found.extend(_candidates(v, path, depth - 1))
    return found


def _select(obj: object, key: str, source: str) -> tuple[object, str, list[str]]:
    """The value at the dotted ``key`` path, the path walked, and the sibling entries passed on the way."""
    node, walked, siblings = obj, "", []
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            where = f"{walked!r}" if walked else "the top level"
            have = (
                "it holds the keys " + ", ".join(sorted(_key_text(k) for k in node))
                if isinstance(node, Mapping) and node
                else f"it is not a mapping ({type(node).__name__})"
            )
            raise UnsupportedFormatError(f"{source}: key {key!r}: {where} has no key {part!r}; {have}")
        siblings += [_join(walked, k) for k in node if k != part]
        walked, node = _join(walked, part), node[part]
    return node, walked, siblings


def _state_dict(
    obj: object, source: str, key: str | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of a (possibly wrapped) state dict, and the dotted paths of what was left out.

    ``key``: a dotted path to the state dict (``model.state_dict``); without it, the top level or one of
    the usual wrappers (``state_dict``, ``model_state_dict``, ``model``, ``module``) is taken.
    """
    siblings: list[str] = []
    prefix = ""
    if key:
        obj, prefix, siblings = _select(obj, key, source)
        found = _tensors_of(obj)
    else:
        found = _tensors_of(obj)
        if not found and isinstance(obj, Mapping):
            for wrapper in _WRAPPER_KEYS:
                found = _tensors_of(obj.get(wrapper))
                if found:
                    siblings = [_key_text(k) for k in obj if k != wrapper]
                    obj, prefix = obj[wrapper], wrapper
                    break
    if not found:
        where = f"at key {key!r}" if key else "at its top level"
        candidates = [c for c in _candidates(obj) if c != prefix]
        if candidates:
            shown = ", ".join(f"--key {_join(prefix, c)}" for c in candidates[:8])
            raise UnsupportedFormatError(
                f"{source} holds no tensors {where}, but a state dict is nested inside: convert it with "
                f"{shown}"
            )
        raise UnsupportedFormatError(
            f"{source} holds no state dict {where} (a mapping of names to tensors or numeric arrays), so it "
            "has no safetensors form; open it with safeload.load() to see what it holds"
        )
    assert isinstance(obj, Mapping)
    left_out = siblings + [_join(prefix, k) for k in obj if not (isinstance(k, str) and k in found)]
    return found, left_out


def _log_left_out(source: str, left_out: tuple[str, ...]) -> None:
    if left_out:
        _log.warning("%s: left out %d non-tensor entries: %s", source, len(left_out), ", ".join(left_out))


# torch dtype -> safetensors code. Complex tensors stay refused by name, as convert has always done: C64
# is a late addition to safetensors that older readers of converted weights reject.
_ST_DTYPES = {name: code for code, name in SAFETENSORS_DTYPES.items() if not name.startswith("complex")}


@dataclass(frozen=True)
class _Mapped:
    """The verified source file the loader mapped, so tensor bytes can be copied from it kernel-side.

    ``base`` is the address of the file's byte 0 in this process's copy-on-write mapping; a tensor whose
    bytes lie inside ``[base, base + size)`` holds exactly the file's bytes at ``data_ptr() - base``
    (nothing writes into the mapping between the load and the copy).
    """

    fd: int
    base: int
    size: int

    def offset_of(self, t: torch.Tensor) -> int | None:
        start = t.data_ptr() - self.base
        if 0 <= start and start + t.nbytes <= self.size:
            return start
        return None


@contextmanager
def _load_mapped(
    src: Path, policy: Policy | None, weights_only: bool, opened: tuple[int, str] | None = None,
    encoding: str = "utf-8",
) -> Iterator[tuple[Any, _Mapped | None]]:
    """``safeload.load(src, map_location="cpu", unpickler="inert")``, keeping the source descriptor open.

    The same steps as :func:`safeload._loading.loader.load` (the same private functions, so the same jail,
    the same
    manifest validation and the same ``weights_only`` refusal); the difference is that the caller also
    gets the opened, verified file and where it is mapped, to copy tensor bytes from it without reading
    them through this process.

    ``opened`` is a descriptor (and a name for messages) to read instead of opening ``src``, such as a
    :func:`_snapshot`; it is closed here either way.

    Raises:
        The errors of :func:`safeload.load`.
    """
    from safeload._loading import loader as _loader
    from safeload._loading.formats import sniff
    from safeload._loading.rebuild import build, make_restore
    from safeload.policy import load_policy

    try:
        pol = load_policy(policy)
        mode: Literal["inert", "execute"] = (
            "execute" if pol.sandbox.unpickler == "execute" and not weights_only else "inert"
        )
        fd, name = opened if opened is not None else _loader._open_source(src, pol)
    except BaseException:
        if opened is not None:
            os.close(opened[0])
        raise
    try:
        size = os.fstat(fd).st_size
        if sniff(fd, size) == "safetensors":
            yield _loader._load_safetensors(fd, name, "cpu"), None
            return
        manifest, outputs = _loader._run_jail(fd, size, pol, mode, _loader.check_encoding(encoding))
        if weights_only:
            _loader._refuse_code(name, manifest)
        raw = _loader._raw_storages(manifest, fd, size, outputs)
        bases = {
            t.data_ptr() - spec.offset
            for spec, t in zip(manifest.storages, raw, strict=True)
            if spec.kind == "input" and spec.nbytes and spec.offset % spec.align == 0
        }
        obj = build(manifest, raw, make_restore("cpu"))
        # One mapping gives one base; without one (nothing mapped in place) tensors come from memory.
        yield obj, (_Mapped(fd, bases.pop(), size) if len(bases) == 1 else None)
    finally:
        os.close(fd)


def _snapshot(src: Path, pol: Policy, memo_dir: Path) -> tuple[int, str, str]:
    """A read-only descriptor of a private copy of ``src``, a name for messages, and the copy's sha256.

    Hashing the copy, not the path, means the digest a conversion is filed under is the digest of the
    bytes converted, however the file changes meanwhile. The copy is an unlinked file next to the
    conversions (disk-backed: a large checkpoint costs page cache, not pinned memory, and tensor bytes
    can still be copied from it kernel-side); once written, only the read-only descriptor is left, so
    neither the jail nor anyone else can change it. The digest is remembered for :func:`_remembered`.

    Raises:
        IntegrityError: ``src`` is pinned in ``[files]`` and its bytes differ.
    """
    from safeload._trust.local_files import local_load_path

    staging = memo_dir.parent
    makedirs_shared(staging)  # converted/ holds what every user of the store reads
    h = hashlib.sha256()
    opened = local_load_path(src, pol)  # a [files]-pinned path reads its verified store copy
    with open(opened, "rb") as f, tempfile.TemporaryFile(dir=staging) as tmp:
        before = _source_stat(os.fstat(f.fileno()))
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            tmp.write(chunk)
        tmp.flush()
        after = _source_stat(os.fstat(f.fileno()))
        fd = os.open(f"/proc/self/fd/{tmp.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
    digest = h.hexdigest()
    # Remembered only for a file unchanged while copied and last changed over a second ago: a later
    # change then gets a later ctime even on a file system whose clock ticks coarsely.
    if opened == os.fspath(src) and before == after and max(after[3], after[4]) < time.time_ns() - _RACY_NS:
        path = os.path.realpath(src)
        memo_dir.mkdir(parents=True, exist_ok=True)
        mfd, tmp_memo = tempfile.mkstemp(prefix=".memo-", dir=memo_dir)
        with os.fdopen(mfd, "w", encoding="utf-8") as out:
            json.dump({"path": path, "stat": after, "sha256": digest}, out)
        os.replace(tmp_memo, _memo_path(memo_dir, path))
    return fd, str(src), digest


def _memo_path(memo_dir: Path, real: str) -> Path:
    return memo_dir / (hashlib.sha256(real.encode()).hexdigest() + ".json")


def _remembered(src: Path, memo_dir: Path) -> str | None:
    """The sha256 :func:`_snapshot` found for ``src``, if the file's stat is still the one it had then.

    The stat is device, inode, size, mtime and ctime: any write or rename changes the ctime, which no
    one can set back. The digest only picks the cache entry; a miss converts a fresh snapshot.
    """
    path = os.path.realpath(src)
    try:
        seen = json.loads(_memo_path(memo_dir, path).read_text(encoding="utf-8"))
        if seen["stat"] == _source_stat(os.stat(path)) and _SHA_RE.match(seen["sha256"]):
            return str(seen["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _source_stat(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _dtype_code(name: str, t: torch.Tensor) -> str:
    code = _ST_DTYPES.get(str(t.dtype).removeprefix("torch."))
    if code is None:
        raise UnsupportedFormatError(f"tensor {name!r} has dtype {t.dtype}; safetensors cannot store it")
    return code


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _copy_range(src: _Mapped, start: int, out: int, count: int, at: int) -> bool:
    """Copy ``count`` bytes of the source at ``start`` to ``out`` at ``at`` in the kernel.

    Returns False when the file systems cannot (the caller then writes from memory).

    Raises:
        IntegrityError: the source file shrank after it was verified and mapped.
    """
    while count:
        try:
            n = os.copy_file_range(src.fd, out, count, start, at)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                return False
            raise
        if n == 0:
            raise IntegrityError(
                "the checkpoint shrank while it was being converted; something is rewriting the verified "
                "file. Find what writes to it and load it again"
            )
        start, at, count = start + n, at + n, count - n
    return True


def _write_safetensors(
    tensors: Mapping[str, torch.Tensor], fd: int, metadata: Mapping[str, str], src: _Mapped | None = None
) -> None:
    """Write the safetensors format for ``tensors`` to ``fd``, never building the file in memory.

    ``safetensors.torch.save_file`` copies every tensor into a Python ``bytes`` first; for a model of
    gigabytes that doubles peak memory and costs a pass over the data. The layout is the format's own:
    an 8-byte little-endian header length, a JSON header padded with spaces to 8 bytes, then each
    tensor's bytes in header order. Every name gets its own bytes, so tensors that shared a storage (tied
    weights) or were views come out as separate, contiguous copies. A contiguous tensor whose bytes are
    a range of the mapped source file ``src`` is copied file to file by ``copy_file_range`` (no page
    of it passes through this process); any other tensor is written from memory.

    Raises:
        UnsupportedFormatError: a tensor has a dtype safetensors cannot store.
        IntegrityError: the source file shrank while its bytes were being copied.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    order = sorted(tensors)
    for name in order:
        t = tensors[name]
        end = offset + t.numel() * t.element_size()
        header[name] = {"dtype": _dtype_code(name, t), "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    _pwrite_all(fd, memoryview(len(raw).to_bytes(8, "little") + raw), 0)
    data_start = 8 + len(raw)
    # Sized up front: ext4 and friends then allocate once instead of growing the file per tensor.
    os.ftruncate(fd, data_start + offset)
    for name in order:
        t = tensors[name]
        if not t.numel():
            continue
        at = data_start + header[name]["data_offsets"][0]
        t = t if t.device.type == "cpu" else t.to("cpu")
        start = src.offset_of(t) if src is not None and t.is_contiguous() else None
        if start is not None and src is not None and _copy_range(src, start, fd, t.nbytes, at):
            continue
        t = t.contiguous()
        # Native byte order is little-endian on every platform torch ships CPU wheels for.
        _pwrite_all(fd, t.reshape(-1).view(torch.uint8).numpy().data.cast("B"), at)


def _atomic_save(
    tensors: Mapping[str, torch.Tensor],
    dst: Path,
    metadata: Mapping[str, str],
    src: _Mapped | None = None,
    *,
    mode: int | None = None,
) -> None:
    """Write ``dst`` under a temporary name and rename it into place: with exactly ``mode`` (the store's
    read-only copies), or, when None, with the permissions the caller's umask gives a new file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_beside(dst)
    try:
        try:
            _write_safetensors(tensors, fd, metadata, src)
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    metadata: Mapping[str, str] | None = None,
    weights_only: bool = False,
    key: str | None = None,
    encoding: str = "utf-8",
) -> Path:
    """Convert one pickle checkpoint holding a state dict into a safetensors file at ``dst``.

    The checkpoint is opened by ``safeload.load(src, map_location="cpu")`` in the jail with the inert
    unpickler, so nothing in it runs anywhere; a state dict wrapped under
    ``state_dict``/``model_state_dict``/``model``/``module`` is unwrapped, one nested deeper is named by
    ``key`` (a dotted path: ``model.state_dict``), a ``.npz`` archive's numeric arrays are written under
    their names, and entries that are not tensors (stubs of code a payload tried to call, counters, ...)
    are left out and logged. With ``weights_only=True`` any code-bearing global refuses the file instead.
    ``encoding`` decodes a Python 2 pickle's strings, as for :func:`safeload.load`.
    ``dst`` is written atomically, with the permissions the caller's umask gives a new file. Returns
    ``dst``; :func:`convert_checkpoint` also says what was written and left out.

    Raises:
        UnsafeContentError: ``weights_only=True`` and the checkpoint references code-bearing globals.
        UnsupportedFormatError: the file is not a checkpoint format safeload reads, holds no state dict
            (the message names the ``key`` paths that hold one), or ``key`` is not in it.
        SandboxError: the jail failed (and its subclasses for timeouts and limits).
        IntegrityError: ``src`` is pinned in the policy's ``[files]`` and its bytes differ.
    """
    done = convert_checkpoint(
        src, dst, policy=policy, metadata=metadata, weights_only=weights_only, key=key, encoding=encoding
    )
    _log_left_out(str(src), done.left_out)
    return done.output


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    metadata: Mapping[str, str] | None = None,
    weights_only: bool = False,
    key: str | None = None,
    encoding: str = "utf-8",
) -> Conversion:
    """:func:`convert_file`, returning what was written and what was left out instead of logging it.

    Raises:
        The errors of :func:`convert_file`.
    """
    return _convert(Path(src), Path(dst), policy, metadata, weights_only, None, key=key, encoding=encoding)


def _convert(
    src: Path,
    dst: Path,
    policy: Policy | None,
    metadata: Mapping[str, str] | None,
    weights_only: bool,
    opened: tuple[int, str] | None,
    mode: int | None = None,
    key: str | None = None,
    encoding: str = "utf-8",
) -> Conversion:
    meta = {"format": "pt", **(metadata or {})}
    with _load_mapped(src, policy, weights_only, opened, encoding) as (obj, mapped):
        tensors, left_out = _state_dict(obj, str(src), key)
        _atomic_save(tensors, dst, meta, mapped, mode=mode)
    return Conversion(output=dst, tensors=tuple(sorted(tensors)), left_out=tuple(left_out))


def _read_index(index: Path) -> dict[str, Any]:
    try:
        data: Any = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedFormatError(f"{index}: not a readable JSON weight index ({exc})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise UnsupportedFormatError(f"{index}: 'weight_map' must map tensor names to shard file names")
    assert isinstance(data, dict)
    for shard in set(weight_map.values()):
        if "/" in shard or "\\" in shard or shard in ("", ".", "..") or not shard.endswith(".bin"):
            raise UnsafeContentError(
                f"{index}: shard {shard!r} is not a plain '.bin' file next to the index; "
                "a weight index may only name files in its own folder"
            )
    return data


def convert_sharded(
    index: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
) -> ShardedConversion:
    """Convert a sharded checkpoint (``pytorch_model.bin.index.json`` and its shards) into ``out_dir``.

    Writes one safetensors file per shard (``model-00001-of-0000N.safetensors``) and
    ``model.safetensors.index.json`` whose ``weight_map`` names them. Shards are opened in the jail as in
    :func:`convert_file`.

    Raises:
        UnsafeContentError: a shard name escapes the index's folder, or a shard references code.
        UnsupportedFormatError: the index or a shard is malformed.
        SandboxError: the jail failed.
    """
    index_path = Path(index)
    data = _read_index(index_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: dict[str, Path] = {}
    for shard in sorted(set(data["weight_map"].values())):
        name = safetensors_name(shard)
        shards[name] = convert_file(index_path.parent / shard, out / name, policy=policy)
    new_index = _converted_index(data)
    target = out / safetensors_name(index_path.name)
    target.write_text(json.dumps(new_index, indent=2, sort_keys=True), encoding="utf-8")
    return ShardedConversion(index=target, shards=shards)


def _converted_index(data: Mapping[str, Any]) -> dict[str, Any]:
    metadata = data.get("metadata")
    return {
        "metadata": dict(metadata) if isinstance(metadata, Mapping) else {},
        "weight_map": {k: safetensors_name(v) for k, v in data["weight_map"].items()},
    }


def cached_conversion(
    src: str | os.PathLike[str],
    *,
    policy: Policy,
    sha256: str | None = None,
) -> Path:
    """The safetensors form of the checkpoint ``src``, converted once and kept in the store.

    The result lives at ``<store>/converted/sha256/<hex>.safetensors`` where ``<hex>`` is the source's
    sha256 (``sha256`` when the caller already verified it, as the store does; else that of a private
    copy of the file, which is what gets converted, remembered while the file's stat is unchanged). A
    second call for the same bytes returns the existing file without opening the checkpoint, and without
    writing anything: a store prepared by its owner (``safeload prefetch``) serves users who may only
    read it. The converted file is read-only and readable by every user who may enter the store.

    Raises:
        UnsafeStoreError: the converted file, its record or a folder leading to them could be changed by
            a user other than the caller and root.
        StoreAccessError: the checkpoint must be converted and this process may not write the store.
        The errors of :func:`convert_file`.
    """
    store = Store(Path(policy.store))
    try:
        return _cached_conversion(Path(src), policy, sha256, store)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise store.access_error(Path(e.filename or store.root / "converted"), e) from None
        raise


def _cached_conversion(src: Path, policy: Policy, sha256: str | None, store: Store) -> Path:
    converted = store.root / "converted"
    opened: tuple[int, str] | None = None
    if sha256 is not None:
        m = _SHA_RE.match(sha256)
        if m is None:
            raise UnsupportedFormatError(f"{sha256!r} is not a sha256 digest ('sha256:<64 hex>')")
        digest = m.group(2)
    else:
        remembered = _remembered(src, converted / "by-path")
        if remembered is not None and _fingerprint_matches(store, *_cache_paths(converted, remembered)):
            return _cache_paths(converted, remembered)[0]
        fd, name, digest = _snapshot(src, policy, converted / "by-path")
        opened = (fd, name)
    try:
        target, record = _cache_paths(converted, digest)
        if _fingerprint_matches(store, target, record):
            return target
        # One process converts; another one asking for the same bytes waits and then reuses its result.
        with store.lock("convert:" + digest):
            if _fingerprint_matches(store, target, record):
                return target
            handed, opened = opened, None  # _convert closes it
            makedirs_shared(target.parent)
            done = _convert(src, target, policy, {"safeload.source_sha256": digest}, False, handed, 0o444)
            _log_left_out(str(src), done.left_out)
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                # The digest lets a store copied elsewhere (an image layer unpacked on pull: new inodes)
                # be recognised by its bytes instead of converted again by a reader that may not write.
                produced, _ = hash_fd(fd, mapped=False)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            write_shared(record, json.dumps({**_fingerprint(st), "sha256": produced}).encode())
        return target
    finally:
        if opened is not None:
            os.close(opened[0])


def converted_path(policy: Policy, sha256: str) -> Path:
    """Where :func:`cached_conversion` keeps the safetensors form of the checkpoint whose digest is
    ``sha256`` (``sha256:<hex>``); the file exists once that checkpoint has been converted."""
    return _cache_paths(Path(policy.store).expanduser() / "converted", sha256.partition(":")[2])[0]


def _cache_paths(converted: Path, digest: str) -> tuple[Path, Path]:
    target = converted / "sha256" / f"{digest}.safetensors"
    return target, target.with_name(target.name + ".stat.json")


def _fingerprint(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "mode": st.st_mode}


def _fingerprint_matches(store: Store, target: Path, record: Path) -> bool:
    """Whether the cached file is still the one this process family wrote (else it is converted again).

    A converted file that was replaced, touched or turned into a symlink after it was written is not
    trusted: converting again costs one jail run, loading a swapped file would load foreign weights. A
    file whose stat differs (the store was copied, or unpacked from an image layer) but whose bytes still
    hash to the recorded digest is the same file: it is accepted, and its record refreshed where the
    store may be written.

    Raises:
        UnsafeStoreError: someone other than the caller and root could change the file or its record.
    """
    st = store.lstat_inside(target)
    if st is None:
        return False
    store.lstat_inside(record)
    try:
        expected = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        expected = None
    if not isinstance(expected, dict) or not stat.S_ISREG(st.st_mode):
        return _changed(target)
    digest = expected.pop("sha256", None)
    if expected == _fingerprint(st):
        return True
    if not isinstance(digest, str) or expected["mode"] != st.st_mode or expected["size"] != st.st_size:
        return _changed(target)
    fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        actual, _ = hash_fd(fd, mapped=False)
        now = os.fstat(fd)
    finally:
        os.close(fd)
    if actual != digest:
        return _changed(target)
    with contextlib.suppress(OSError):  # a reader that may not write re-hashes next time too
        write_shared(record, json.dumps({**_fingerprint(now), "sha256": digest}).encode())
    return True


def _changed(target: Path) -> bool:
    _log.warning("%s changed after it was converted; converting the source again", target)
    return False


def converted_index(index: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``model.safetensors.index.json`` content for a ``pytorch_model.bin.index.json`` (validated).

    Raises:
        UnsafeContentError: a shard name escapes the index's folder.
        UnsupportedFormatError: the index is malformed.
    """
    return _converted_index(_read_index(Path(index)))
