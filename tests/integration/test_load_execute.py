"""``unpickler="execute"``: real ``torch.load`` inside the jail, plain data back, bit for bit.

The same hard cases the inert path is held to (all dtypes, views and shared storage, parameters, optimizer
state, plain values, numpy values, state-dict metadata) are saved into one checkpoint per format, loaded in
execute mode, and compared with ``torch.load(weights_only=False)`` run in a throwaway subprocess. Each
execute-mode load imports torch in the jail, so the cases share a file instead of a load each.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import safeload
from tests.helpers.reference import Described, assert_same, references
from tests.integration.test_load_torch import CASES

# Cases left out: "module" pickles a class defined in a test module, which the jail cannot import (execute
# mode needs the checkpoint's classes importable, like torch.load); "many_small_tensors" is the inert
# path's scale test and would only make this one slow.
_SKIP = {"module", "many_small_tensors"}
# torch cannot write these dtypes into the legacy format.
_NOT_IN_LEGACY = {"torch.float8_e4m3fn", "torch.float8_e5m2", "uint16", "uint32", "uint64", "complex32"}


def _combined() -> dict[str, Any]:
    return {name: build() for name, build in CASES.items() if name not in _SKIP}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    model[3].weight.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Described]]:
    root = tmp_path_factory.mktemp("execute")
    obj = _combined()
    paths: dict[str, tuple[Path, str]] = {}
    torch.save(obj, root / "cases.pt")
    paths["zip"] = (root / "cases.pt", "torch")
    legacy = dict(obj)
    legacy["dtypes"] = {k: v for k, v in obj["dtypes"].items() if k not in _NOT_IN_LEGACY}
    torch.save(legacy, root / "cases.legacy.pt", _use_new_zipfile_serialization=False)
    paths["legacy"] = (root / "cases.legacy.pt", "torch")
    model = _model()
    torch.save({"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict()},
               root / "model.pt")
    paths["module"] = (root / "model.pt", "torch")
    np.savez(
        root / "arrays.npz",
        f=np.arange(12, dtype="<f4").reshape(3, 4),
        fortran=np.asfortranarray(np.ones((2, 3), dtype=">i4")),
        b=np.array([True, False]),
        c=np.array([1 + 2j], dtype="<c16"),
        objects=np.array([{"k": 1}, "s", None]),
    )
    paths["npz"] = (root / "arrays.npz", "numpy")
    refs = references([(p, loader, None) for p, loader in paths.values()])
    return {name: (p, ref) for (name, (p, _)), ref in zip(paths.items(), refs)}


@pytest.fixture(scope="module")
def executed(saved: dict[str, tuple[Path, Described]]) -> Callable[[str], Any]:
    """One execute-mode load per file for the whole module (each costs a torch import in the jail)."""
    cache: dict[str, Any] = {}

    def load(case: str) -> Any:
        if case not in cache:
            cache[case] = safeload.load(saved[case][0], unpickler="execute")
        return cache[case]

    return load


@pytest.mark.slow
@pytest.mark.parametrize("case", ["zip", "legacy", "module", "npz"])
def test_execute_matches_torch_load(
    saved: dict[str, tuple[Path, Described]], executed: Callable[[str], Any], case: str
) -> None:
    assert_same(executed(case), saved[case][1])


@pytest.mark.slow
def test_execute_returns_a_pickled_module_as_a_stub_with_its_state_dict(
    executed: Callable[[str], Any],
) -> None:
    out = executed("module")
    stub = out["model"]
    assert isinstance(stub, safeload.Stub)
    assert stub.qualname == "torch.nn.modules.container.Sequential"
    sd = safeload.state_dict(stub)
    expected = _model().state_dict()
    assert list(sd) == list(expected)
    for key, tensor in expected.items():
        assert torch.equal(sd[key], tensor), key
    assert isinstance(out["optimizer"], dict)


@pytest.mark.slow
def test_execute_keeps_aliasing_and_views(executed: Callable[[str], Any]) -> None:
    out = executed("zip")
    views = out["views"]
    tensors = [v for v in views.values() if isinstance(v, torch.Tensor)]
    by_storage = collections.Counter(t.untyped_storage().data_ptr() for t in tensors if t.numel())
    assert max(by_storage.values()) > 1, "views of one storage came back as copies"
