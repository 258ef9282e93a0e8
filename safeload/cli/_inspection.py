"""What ``safeload inspect`` reports, computed through the loader's own path and never in this process.

A pickle-family file is opened exactly as :func:`safeload.load` opens it (``[files]`` pins honoured) and
parsed by the inert worker in the jail; the validated manifest is then read as data: its format, the
globals the worker saw, every tensor or array node with the dotted path that leads to it, and which of
them share a storage. Nothing is rebuilt: no tensor is mapped and no stub is created. A safetensors file
needs no jail: its JSON header is the whole description.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeload._sandbox.worker.protocol import MAX_SAFETENSORS_HEADER, SAFETENSORS_DTYPES
from safeload.errors import UnsupportedFormatError

__all__ = ["GlobalInfo", "Inspection", "TensorInfo", "inspect_file"]

_MAX_TENSORS_LISTED = 100_000

# (path, kind, dtype, shape, nbytes, storage id)
_Found = tuple[str, str, str, tuple[int, ...], int, "int | None"]


@dataclass(frozen=True)
class GlobalInfo:
    """A global the file references, with the worker's verdict (``data`` or ``stub``)."""

    module: str
    name: str
    verdict: str
    count: int


@dataclass(frozen=True)
class TensorInfo:
    """A tensor or numeric array node: where it sits in the structure and what it holds."""

    name: str
    kind: str  # tensor | parameter | ndarray | storage
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    storage: int | None
    shared_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inspection:
    format: str
    globals: tuple[GlobalInfo, ...]
    tensors: tuple[TensorInfo, ...]
    structure: Any  # the manifest's node tree (sandbox/PROTOCOL.md); None for safetensors


def _key_name(node: Any) -> str:
    if isinstance(node, Mapping):
        if node.get("t") in ("str", "int", "bool"):
            return str(node.get("v"))
        if node.get("t") == "none":
            return "None"
        return f"<{node.get('t')}>"
    return repr(node)


class _Walker:
    def __init__(self, itemsize: Mapping[str, int]) -> None:
        self.itemsize = itemsize
        self.found: list[_Found] = []
        self.by_id: dict[int, int] = {}  # node id -> index in ``found`` of the tensor it defined

    def _record(self, path: str, node: Mapping[str, Any], kind: str) -> None:
        from safeload._loading.manifest import np_itemsize

        shape = tuple(int(x) for x in node.get("shape", ()))
        dtype = str(node.get("dtype"))
        size = np_itemsize(dtype) if kind == "ndarray" else self.itemsize.get(dtype, 0)
        storage = node.get("storage")
        self.found.append((path, kind, dtype, shape, math.prod(shape) * size, storage))

    def walk(self, node: Any, path: str, depth: int = 0) -> None:
        if not isinstance(node, Mapping) or depth > 10_000 or len(self.found) >= _MAX_TENSORS_LISTED:
            return
        kind = node.get("t")
        here = path or "<root>"
        node_id = node.get("id")
        if kind == "ref":
            target = self.by_id.get(node_id) if isinstance(node_id, int) else None
            if target is not None:  # the same tensor object under a second name
                _, k, dtype, shape, nbytes, storage = self.found[target]
                self.found.append((here, k, dtype, shape, nbytes, storage))
            return
        if isinstance(node_id, int) and kind in ("tensor", "ndarray", "parameter"):
            self.by_id[node_id] = len(self.found)
        if kind in ("tensor", "ndarray"):
            self._record(here, node, kind)
        elif kind == "parameter":
            data = node.get("data")
            if isinstance(data, Mapping) and data.get("t") == "tensor":
                if isinstance(data.get("id"), int):
                    self.by_id[data["id"]] = len(self.found)
                self._record(here, data, "parameter")
        elif kind == "storage":
            sid = node.get("storage")
            self.found.append((here, "storage", str(node.get("dtype")), (), 0, sid))
        items = node.get("items")
        if kind in ("dict", "odict", "namespace") and isinstance(items, list):
            for pair in items:
                if isinstance(pair, list) and len(pair) == 2:
                    self.walk(
                        pair[1], f"{path}.{_key_name(pair[0])}" if path else _key_name(pair[0]), depth + 1
                    )
        elif kind in ("list", "tuple", "set", "frozenset", "objarray") and isinstance(items, list):
            for i, value in enumerate(items):
                self.walk(value, f"{path}[{i}]", depth + 1)
        elif kind == "stub":
            for field in ("args", "kwargs", "state"):
                if node.get(field) is not None:
                    self.walk(node[field], f"{path}<{field}>", depth + 1)
            for i, value in enumerate(node.get("listitems") or ()):
                self.walk(value, f"{path}<item {i}>", depth + 1)
            for pair in node.get("dictitems") or ():
                if isinstance(pair, list) and len(pair) == 2:
                    self.walk(pair[1], f"{path}<{_key_name(pair[0])}>", depth + 1)


def _tensors(found: list[_Found]) -> tuple[TensorInfo, ...]:
    by_storage: dict[int, list[str]] = {}
    for name, _kind, _dtype, _shape, _nbytes, storage in found:
        if storage is not None:
            by_storage.setdefault(storage, []).append(name)
    return tuple(
        TensorInfo(
            name=name,
            kind=kind,
            dtype=dtype,
            shape=shape,
            nbytes=nbytes,
            storage=storage,
            shared_with=tuple(n for n in by_storage.get(storage, []) if n != name)
            if storage is not None
            else (),
        )
        for name, kind, dtype, shape, nbytes, storage in found
    )


def _safetensors(fd: int, size: int, name: str) -> Inspection:
    (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if n > min(size - 8, MAX_SAFETENSORS_HEADER):
        raise UnsupportedFormatError(f"{name}: the safetensors header is larger than the file")
    try:
        header = json.loads(os.pread(fd, n, 8))
    except (ValueError, RecursionError) as exc:
        raise UnsupportedFormatError(f"{name}: the safetensors header is not JSON ({exc})") from None
    found: list[_Found] = []
    for key, spec in header.items():
        if key == "__metadata__" or not isinstance(spec, Mapping):
            continue
        dtype = SAFETENSORS_DTYPES.get(str(spec.get("dtype")), str(spec.get("dtype")))
        offsets = spec.get("data_offsets") or (0, 0)
        shape = tuple(int(x) for x in spec.get("shape", ()))
        found.append((key, "tensor", dtype, shape, int(offsets[1]) - int(offsets[0]), None))
    return Inspection("safetensors", (), _tensors(found), None)


def inspect_file(path: Path, *, policy: Any, encoding: str = "utf-8") -> Inspection:
    """Describe the checkpoint at ``path`` without running or rebuilding any of it.

    ``encoding`` decodes a Python 2 pickle's strings, as :func:`safeload.load` takes it.

    Raises:
        UnsupportedFormatError: the content is not a format safeload opens.
        IntegrityError: ``path`` is pinned in the policy's ``[files]`` and its bytes differ.
        SandboxUnavailableError, SandboxTimeoutError, SandboxLimitError, SandboxError: the jail failed.
        OSError: the file cannot be opened.
    """
    from safeload._loading.formats import sniff
    from safeload._loading.loader import _open_source, _run_jail, check_encoding
    from safeload._sandbox.worker.protocol import DTYPE_SIZES

    encoding = check_encoding(encoding)
    fd, name = _open_source(path, policy)
    try:
        size = os.fstat(fd).st_size
        if sniff(fd, size) == "safetensors":
            return _safetensors(fd, size, name)
        # Always the inert unpickler: inspecting must not run the file's code, not even in the jail.
        manifest, _ = _run_jail(fd, size, policy, "inert", encoding)
    finally:
        os.close(fd)
    walker = _Walker(DTYPE_SIZES)
    walker.walk(manifest.root, "")
    globals_ = tuple(GlobalInfo(g.module, g.name, g.verdict, g.count) for g in manifest.globals)
    return Inspection(manifest.format, globals_, _tensors(walker.found), manifest.root)
