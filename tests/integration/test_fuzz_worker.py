"""Bounded fuzzing of the worker's parsers and of the host's manifest validation.

1. The worker's readers (``safeload._sandbox.worker._formats.parse``, which drives the inert unpickler and
the zip
   reader) run in this process on random and mutated artifacts: they never call anything, so this is
   safe here, and much faster than a jail per example. Every input must end in a manifest the host
   validates, or in the worker's typed ``FormatError``/``LimitError``; never another exception, and
   never slowly.
2. A few mutated checkpoints go through the real jail with ``safeload.load``: only ``SafeloadError``s.
3. Mutated manifests never build a view outside its storage: validation refuses them, or every tensor
   built lies inside the bytes it was given.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import time
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safeload
from safeload._loading.manifest import parse_manifest
from safeload._loading.rebuild import build, make_restore
from safeload._sandbox.worker._common import Budgets, FormatError, LimitError
from safeload._sandbox.worker._emit import build_manifest
from safeload._sandbox.worker._formats import parse
from safeload.errors import SafeloadError, SandboxError
from tests.helpers.torch_tar import torch_tar_bytes


def _torch_zip() -> bytes:
    a = torch.arange(12, dtype=torch.float32)
    buf = io.BytesIO()
    torch.save({"a": a, "v": a[2:].view(2, 5), "p": torch.nn.Parameter(torch.ones(2)), "n": [1, "x"]}, buf)
    return buf.getvalue()


def _torch_legacy() -> bytes:
    buf = io.BytesIO()
    value = {"a": torch.arange(4, dtype=torch.int16), "s": {1.5}}
    torch.save(value, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float64).reshape(2, 3))
    return buf.getvalue()


def _pickles() -> list[bytes]:
    value = {"a": [1, 2.5, "s", b"b", None, True], "t": (1, (2,)), "set": {3}, "np": np.arange(3)}
    return [pickle.dumps(value, protocol=p) for p in range(6)]


SEEDS = [_torch_zip(), _torch_legacy(), _npy(), torch_tar_bytes(), *_pickles()]
BUDGETS = Budgets(max_nodes=20_000, max_depth=100, max_memo=20_000, max_ops=200_000, max_output_bytes=1 << 24)


def _outputs(table: Any) -> dict[str, int]:
    return {key: nbytes for key, nbytes, _ in table.outputs}


def _run_worker_in_process(data: bytes) -> None:
    # This process's CPU time, which other work on the machine does not inflate: a pathological input
    # (quadratic memo handling, say) shows up as seconds of it.
    start = time.process_time()
    try:
        parsed, table = parse(data, BUDGETS)  # type: ignore[arg-type]
        manifest = build_manifest(parsed.fmt, parsed.root, table, parsed.globals_seen, BUDGETS)
        for _key, _n, chunks in table.outputs:
            for _ in chunks():
                pass
    except (FormatError, LimitError):
        return
    finally:
        assert time.process_time() - start < 5.0
    # Whatever the worker writes, the host must accept (or reject with its typed error, never crash).
    raw = json.dumps(manifest).encode()
    try:
        parse_manifest(raw, input_size=len(data), outputs=_outputs(table), max_nodes=20_000, max_depth=100)
    except SandboxError as exc:
        raise AssertionError(f"the host rejects what the worker wrote: {exc}") from exc


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "dup" and data:
            end = min(len(data), pos + draw(st.integers(1, 32)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(_mutated())
def test_worker_parsers_on_mutated_artifacts(data: bytes) -> None:
    _run_worker_in_process(data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=300).map(lambda b: b"\x80\x04" + b))
def test_worker_unpickler_on_random_opcodes(data: bytes) -> None:
    _run_worker_in_process(data)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(_mutated())
def test_jailed_load_of_mutated_artifacts_fails_only_with_typed_errors(data: bytes) -> None:
    try:
        safeload.load(io.BytesIO(data))
    except SafeloadError:
        pass


def _manifest_and_raw() -> tuple[dict[str, Any], bytes]:
    data = _torch_zip()
    parsed, table = parse(data, BUDGETS)  # type: ignore[arg-type]
    return build_manifest(parsed.fmt, parsed.root, table, parsed.globals_seen, BUDGETS), data


_BASE_MANIFEST, _BASE_INPUT = _manifest_and_raw()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_ALL_PATHS = [p for p in _paths(_BASE_MANIFEST) if p]
_INTERESTING = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2**31, 2**63, 63, 64]),
    st.lists(st.integers(-3, 2**40), max_size=4), st.text(max_size=4), st.none(), st.booleans(),
    st.sampled_from(["tensor", "ref", "stub", "uint8", "float64", "output", "input"]),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(_ALL_PATHS), _INTERESTING), min_size=1, max_size=4))
def test_mutated_manifests_never_build_out_of_bounds(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = copy.deepcopy(_BASE_MANIFEST)
    for path, value in edits:
        target = doc
        try:
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this path
    raw_bytes = bytearray(_BASE_INPUT)
    try:
        manifest = parse_manifest(json.dumps(doc).encode(), input_size=len(raw_bytes), outputs={})
    except SandboxError:
        return
    raw = [
        torch.frombuffer(raw_bytes, dtype=torch.uint8, count=s.nbytes, offset=s.offset)
        if s.nbytes else torch.empty(0, dtype=torch.uint8)
        for s in manifest.storages
    ]
    try:
        obj = build(manifest, raw, make_restore("cpu"))
    except SandboxError:
        return
    lo = torch.frombuffer(raw_bytes, dtype=torch.uint8).data_ptr()
    hi = lo + len(raw_bytes)
    for t in _tensors(obj):
        if t.numel() == 0:
            continue
        first = t.data_ptr()
        last = first + sum((s - 1) * st_ for s, st_ in zip(t.shape, t.stride())) * t.element_size()
        assert lo <= first and last + t.element_size() <= hi


def _tensors(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    stack = [obj]
    seen: set[int] = set()
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, dict):
            stack += list(x.values())
        elif isinstance(x, (list, tuple)):
            stack += list(x)
    return out


@pytest.mark.parametrize(
    "payload",
    [
        b"(" * 200_000 + b".",  # a mark bomb
        b"\x80\x04" + b"]" * 50 + b"a" * 49 + b".",
        b"\x80\x04" + b"\x8b\xff\xff\xff\x7f",  # LONG4 claiming 2 GiB
        b"\x80\x04\x8e" + (2**62).to_bytes(8, "little"),  # BINBYTES8 claiming 4 EiB
    ],
    ids=["marks", "nested-lists", "long4", "binbytes8"],
)
def test_bombs_end_in_typed_errors(payload: bytes) -> None:
    _run_worker_in_process(payload)


def test_deep_nesting_is_a_limit_in_the_jail() -> None:
    deep = b"\x80\x04" + b"]" * 5000 + b"a" * 4999 + b"."
    with pytest.raises(safeload.SandboxLimitError):
        safeload.load(io.BytesIO(deep))
