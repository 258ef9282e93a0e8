"""The weights of a ``torch.export`` archive (``.pt2``), read without unpickling and without ``torch.export``.

``torch.export.save`` (torch 2.13, ``archive_version`` 0) writes a zip whose entries sit under one
folder (``model/``)::

    model/archive_format                          b"pt2"
    model/byteorder                               b"little"
    model/models/<name>.json                      the graph (never read here: it names ops to call)
    model/data/weights/<name>_weights_config.json {"config": {fqn: PayloadMeta}}
    model/data/weights/weight_<i>                 raw little-endian bytes of one storage
    model/data/constants/...                      lifted constants, torchbind and opaque objects (pickles)
    model/data/sample_inputs/<name>.pt            the example inputs (a torch.save pickle)

Each ``PayloadMeta`` names the record (``path_name``), whether it is a pickle (``use_pickle``: tensor
subclasses) and the tensor's metadata (dtype, sizes, strides, storage offset, layout, device). Raw
records are read as flat tensors and viewed with the pinned sizes and strides (bounds-checked here, so a
lying config cannot read past a record); weights that share a record share storage, as torch keeps them.
A pickled weight, and a legacy ``data/weights/<name>.pt`` file, are read through the jail
(:func:`safeload.load`). Nothing else in the archive (graph, constants, sample inputs, AOTInductor
libraries) is read: those are code, or pickles, and not needed to fill a module the caller built.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

from safeload.errors import UnsafeContentError, UnsupportedFormatError
from safeload.policy import Policy

__all__ = ["read_weights"]

_MAX_CONFIG = 64 << 20
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}")
_STRIDED = 7  # torch._export.serde.schema.Layout.Strided
# torch._export.serde.schema.ScalarType -> torch dtype name
_DTYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32", 8: "float64",
    9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16", 28: "uint16",
    29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz",
    33: "float8_e8m0fnu", 34: "uint32", 35: "uint64",
}  # fmt: skip


def _member(zf: zipfile.ZipFile, name: str, cap: int, where: str) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise UnsupportedFormatError(f"{where}: the pt2 archive has no {name}") from None
    if info.file_size > cap:
        raise UnsupportedFormatError(f"{where}: {name} is larger than {cap} bytes")
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsupportedFormatError(
            f"{where}: {name} is compressed; torch.export stores records uncompressed"
        )
    with zf.open(info) as fh:
        data = fh.read(cap + 1)
    if len(data) != info.file_size:
        raise UnsupportedFormatError(f"{where}: {name} is not the size its zip entry declares")
    return data


def _prefix(zf: zipfile.ZipFile, where: str) -> str:
    found = [n[: -len("archive_format")] for n in zf.namelist() if re.fullmatch(r"[^/]+/archive_format", n)]
    if len(found) != 1:
        raise UnsupportedFormatError(f"{where}: not a torch.export archive (no single <name>/archive_format)")
    prefix = found[0]
    if _member(zf, prefix + "archive_format", 64, where).strip() != b"pt2":
        raise UnsupportedFormatError(f"{where}: {prefix}archive_format is not 'pt2'")
    if prefix + "byteorder" in zf.namelist():
        order = _member(zf, prefix + "byteorder", 64, where).strip()
        if order != b"little":
            raise UnsupportedFormatError(f"{where}: the archive's byte order is {order[:20]!r}, not little")
    return prefix


def _ints(value: Any, field: str, where: str) -> list[int]:
    if not isinstance(value, list):
        raise UnsupportedFormatError(f"{where}: weights config {field} is not a list")
    out = []
    for item in value:
        n = item.get("as_int") if isinstance(item, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise UnsupportedFormatError(
                f"{where}: weights config {field} holds {str(item)[:80]!r}, not a size"
            )
        out.append(n)
    return out


def _view(flat: Any, meta: Mapping[str, Any], fqn: str, where: str) -> Any:
    import torch

    if meta.get("layout", _STRIDED) != _STRIDED:
        raise UnsupportedFormatError(f"{where}: {fqn} is not a strided (dense) tensor")
    sizes = _ints(meta.get("sizes"), f"{fqn}.sizes", where)
    strides = _ints(meta.get("strides"), f"{fqn}.strides", where)
    (offset,) = _ints([meta.get("storage_offset")], f"{fqn}.storage_offset", where)
    if len(sizes) != len(strides):
        raise UnsupportedFormatError(f"{where}: {fqn} has {len(sizes)} sizes but {len(strides)} strides")
    if math.prod(sizes) == 0:
        return torch.empty(sizes, dtype=flat.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True))
    if last >= flat.numel():
        raise UnsupportedFormatError(
            f"{where}: {fqn} reaches element {last} of a record of {flat.numel()} elements"
        )
    return torch.as_strided(flat, sizes, strides, offset)


def _jailed_tensor(data: bytes, fqn: str, where: str, policy: Policy) -> Any:
    import torch

    from safeload import load

    obj = load(io.BytesIO(data), "cpu", policy=policy)
    if not isinstance(obj, torch.Tensor):
        raise UnsafeContentError(
            f"{where}: the pickled weight {fqn} is not a tensor (it holds {type(obj).__name__}); safeload "
            "does not rebuild objects from a model's pickles"
        )
    return obj


def read_weights(path: str, where: str, policy: Policy) -> dict[str, Any]:
    """The state dict (parameters and persistent buffers, by name) of the ``.pt2`` archive at ``path``.

    Raises:
        UnsupportedFormatError: the archive is not torch.export's, holds more than one model, or its
            weights config is malformed or points outside its records.
        UnsafeContentError: a pickled weight (read in the jail) is not a tensor.
        SandboxError: the jail failed on a pickled weight.
    """
    import torch

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedFormatError(f"{where}: not a pt2 archive: {exc}") from None
    with zf:
        prefix = _prefix(zf, where)
        models = sorted(
            m.group(1)
            for n in zf.namelist()
            if (m := re.fullmatch(re.escape(prefix) + r"models/([^/]+)\.json", n)) is not None
        )
        if len(models) != 1 or not _NAME.fullmatch(models[0]):
            raise UnsupportedFormatError(f"{where}: the archive holds models {models[:5]}, not exactly one")
        model = models[0]
        limit = max(os.path.getsize(path), 1)  # a stored record is never larger than the archive
        weights_dir = f"{prefix}data/weights/"
        legacy = f"{weights_dir}{model}.pt"
        if legacy in zf.namelist():
            return load_legacy(_member(zf, legacy, limit, where), where, policy)
        raw = _member(zf, f"{weights_dir}{model}_weights_config.json", _MAX_CONFIG, where)
        try:
            config = json.loads(raw)["config"]
        except (ValueError, KeyError, TypeError):
            raise UnsupportedFormatError(f"{where}: the weights config is not torch.export's JSON") from None
        if not isinstance(config, dict):
            raise UnsupportedFormatError(f"{where}: the weights config's 'config' is not a mapping")
        flats: dict[tuple[str, str], Any] = {}
        state: dict[str, Any] = {}
        for fqn, meta in config.items():
            if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
                raise UnsupportedFormatError(f"{where}: weights config entry {str(fqn)[:80]!r} is malformed")
            record = meta["path_name"]
            if not _NAME.fullmatch(record):
                raise UnsupportedFormatError(f"{where}: weights config names the record {record[:80]!r}")
            data_name = weights_dir + record
            if meta.get("use_pickle") is not False:
                state[fqn] = _jailed_tensor(_member(zf, data_name, limit, where), fqn, where, policy)
                continue
            tmeta = meta.get("tensor_meta")
            if not isinstance(tmeta, dict):
                raise UnsupportedFormatError(f"{where}: {fqn} has no tensor_meta")
            dtype_name = _DTYPES.get(tmeta.get("dtype"))  # type: ignore[arg-type]
            dtype = getattr(torch, dtype_name, None) if dtype_name is not None else None
            if not isinstance(dtype, torch.dtype):
                raise UnsupportedFormatError(f"{where}: {fqn} has dtype {tmeta.get('dtype')!r}")
            key = (record, str(dtype))
            if key not in flats:
                data = _member(zf, data_name, limit, where)
                size = torch.empty((), dtype=dtype).element_size()
                if len(data) % size:
                    raise UnsupportedFormatError(
                        f"{where}: {record} is not a whole number of {dtype} elements"
                    )
                flats[key] = (
                    torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
                )
            state[fqn] = _view(flats[key], tmeta, fqn, where)
    return state


def load_legacy(data: bytes, where: str, policy: Policy) -> dict[str, Any]:
    """The legacy ``data/weights/<model>.pt`` (a pickled state dict), read in the jail."""
    import torch

    from safeload import load, state_dict

    obj = state_dict(load(io.BytesIO(data), "cpu", policy=policy))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeContentError(f"{where}: the archive's legacy weights file is not a dict of tensors")
    return dict(obj)
