"""Describe a checkpoint without loading it: ``safeload inspect`` and API callers read the same answer.

A pickle-family file is opened exactly as :func:`safeload.load` opens it (``[files]`` pins honoured) and
parsed by the inert worker in the jail, never by the execute mode, not even for a file the caller would
load that way; the validated manifest is then read as data: its format, the globals the worker saw,
every tensor or array node with the path that leads to it, and which of them share a storage. Nothing is
rebuilt: no tensor is mapped and no stub is created. A safetensors file needs no jail: once safetensors
has checked it, its JSON header is the whole description.

Paths name dictionary keys with dots and sequence items with ``[i]`` (``optimizer_states[0].state``); a
stub's state continues its own path, without the ``_parameters``/``_buffers``/``_modules`` level of a
pickled ``nn.Module`` (``model.lin.weight``, as ``state_dict`` names it), while its constructor arguments
appear as ``<args>`` and ``<kwargs>``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safeload._loading.formats import safetensors_header
from safeload._loading.loader import FileLike, _open_source, _run_jail, check_encoding
from safeload._loading.manifest import GlobalRef, np_itemsize
from safeload._sandbox.worker.protocol import DTYPE_SIZES, SAFETENSORS_DTYPES
from safeload.errors import UnsupportedFormatError
from safeload.policy import Policy

__all__ = ["Inspection", "TensorInfo", "inspect_artifact", "tensor_table"]

# Rows of the tensor table; past this a listing helps nobody and only costs memory.
_MAX_TENSORS_LISTED = 100_000
# The level of a pickled nn.Module's state that its state_dict names leave out.
_MODULE_FIELDS = frozenset({"_parameters", "_buffers", "_modules"})


@dataclass(frozen=True)
class TensorInfo:
    """A tensor, parameter, numeric array or bare storage in a checkpoint, named by its path.

    ``storage`` is the manifest's storage id (None in a safetensors file, where each tensor has its own
    bytes); ``shared_with`` names the other rows on the same storage.
    """

    name: str
    kind: str  # tensor | parameter | ndarray | storage
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    storage: int | None
    shared_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_artifact` found: the format, every global, the tensors and the structure.

    ``structure`` is the validated manifest tree (``sandbox/PROTOCOL.md`` nodes, plain JSON values), None
    for safetensors, whose tensor table is all it holds.
    """

    format: str
    globals: tuple[GlobalRef, ...]
    tensors: tuple[TensorInfo, ...]
    structure: Any


def inspect_artifact(path: FileLike, *, policy: Policy | None = None, encoding: str = "utf-8") -> Inspection:
    """Describe the checkpoint at ``path`` (a path or a binary file object) without running or rebuilding
    any of it.

    ``encoding`` decodes a Python 2 pickle's strings, as :func:`safeload.load` takes it.

    Raises:
        UnsupportedFormatError: the content is not a format safeload opens, or a safetensors file is
            malformed, or ``encoding`` is not a text codec.
        IntegrityError: ``path`` is pinned in the policy's ``[files]`` and its bytes differ.
        SandboxUnavailableError, SandboxTimeoutError, SandboxLimitError, SandboxError: the jail failed.
        OSError: the file cannot be opened.
        TypeError: ``path`` is neither a path nor a binary file object.
    """
    encoding = check_encoding(encoding)
    pol = policy if policy is not None else Policy()
    fd, name = _open_source(path, pol)
    try:
        size = os.fstat(fd).st_size
        header = safetensors_header(fd, size)
        if header is not None:
            return _safetensors(fd, name, header)
        manifest, _ = _run_jail(fd, size, pol, "inert", encoding)
    finally:
        os.close(fd)
    return Inspection(manifest.format, manifest.globals, tensor_table(manifest.root), manifest.root)


def tensor_table(root: Any) -> tuple[TensorInfo, ...]:
    """Every tensor, parameter, array and bare storage in a validated manifest tree, by path, with the
    rows that share its storage (at most 100,000 rows)."""
    rows: list[TensorInfo] = []
    _collect(root, "", False, rows, {})
    by_storage: dict[int, list[str]] = {}
    for row in rows:
        if row.storage is not None:
            by_storage.setdefault(row.storage, []).append(row.name)
    return tuple(
        TensorInfo(
            r.name, r.kind, r.dtype, r.shape, r.nbytes, r.storage,
            tuple(n for n in by_storage[r.storage] if n != r.name) if r.storage is not None else (),
        )
        for r in rows
    )  # fmt: skip


def _key_name(key: Any) -> str:
    if isinstance(key, Mapping):
        if key.get("t") in ("str", "int", "bool"):
            return str(key.get("v"))
        if key.get("t") == "none":
            return "None"
        return f"<{key.get('t')}>"
    return str(key)  # a namespace's attribute names are plain strings


def _row(name: str, node: Mapping[str, Any], kind: str) -> TensorInfo:
    shape = tuple(int(x) for x in node["shape"])
    dtype = str(node["dtype"])
    itemsize = np_itemsize(dtype) if kind == "ndarray" else DTYPE_SIZES[dtype]
    return TensorInfo(name or "<root>", kind, dtype, shape, math.prod(shape) * itemsize, node["storage"])


def _collect(
    node: Mapping[str, Any], path: str, in_stub_state: bool, rows: list[TensorInfo],
    defined: dict[int, TensorInfo],
) -> None:
    """Append the rows under ``node`` (validated, so its depth is bounded by the manifest's budget).

    ``defined`` maps the id of each tensor, parameter or array seen so far to its row: a ``ref`` to one is
    the same object under a second name.
    """
    if len(rows) >= _MAX_TENSORS_LISTED:
        return

    def join(part: str) -> str:
        return f"{path}.{part}" if path else part

    t = node["t"]
    if t == "ref":
        target = defined.get(node["id"])
        if target is not None:
            rows.append(TensorInfo(path or "<root>", target.kind, target.dtype, target.shape, target.nbytes,
                                   target.storage))
        return
    if t in ("tensor", "ndarray"):
        row = _row(path, node, t)
        rows.append(row)
        if "id" in node:
            defined[node["id"]] = row
    elif t == "parameter":
        data = node["data"]  # a tensor, or a ref to one defined earlier
        if data["t"] == "ref":
            target = defined.get(data["id"])
            if target is None:
                return
            row = TensorInfo(path or "<root>", t, target.dtype, target.shape, target.nbytes, target.storage)
        else:
            row = _row(path, data, t)
            if "id" in data:
                defined[data["id"]] = row
        rows.append(row)
        if "id" in node:
            defined[node["id"]] = row
    elif t == "storage":
        rows.append(TensorInfo(path or "<root>", "storage", str(node["dtype"]), (), 0, node["storage"]))
    elif t in ("dict", "odict", "namespace"):
        for key, value in node["items"]:
            part = _key_name(key)
            # A pickled nn.Module keeps its tensors one level down; state_dict names leave that level out.
            here = path if in_stub_state and part in _MODULE_FIELDS else join(part)
            _collect(value, here, False, rows, defined)
    elif t in ("list", "tuple", "set", "frozenset", "objarray"):
        for i, value in enumerate(node["items"]):
            _collect(value, f"{path}[{i}]", False, rows, defined)
    elif t == "stub":
        if node.get("state") is not None:
            _collect(node["state"], path, True, rows, defined)
        for field in ("args", "kwargs"):
            if node.get(field) is not None:
                _collect(node[field], f"{path}<{field}>", False, rows, defined)
        for i, value in enumerate(node.get("listitems") or ()):
            _collect(value, f"{path}[{i}]", False, rows, defined)
        for key, value in node.get("dictitems") or ():
            _collect(value, join(_key_name(key)), False, rows, defined)


def _safetensors(fd: int, name: str, header: dict[str, Any]) -> Inspection:
    from safetensors import SafetensorError, safe_open

    try:
        # safetensors' own checks (offsets inside the file, sizes that match shapes), as load applies them.
        with safe_open(f"/proc/self/fd/{fd}", framework="pt"):
            pass
    except SafetensorError as exc:
        raise UnsupportedFormatError(f"{name} looks like safetensors but is malformed: {exc}") from None
    rows = []
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        code = str(spec["dtype"])
        begin, end = spec["data_offsets"]
        shape = tuple(int(x) for x in spec["shape"])
        # A code this table does not know is shown as written; its size comes from the offsets either way.
        dtype = SAFETENSORS_DTYPES.get(code, code)
        rows.append(TensorInfo(key, "tensor", dtype, shape, int(end) - int(begin), None))
    return Inspection("safetensors", (), tuple(rows), None)
