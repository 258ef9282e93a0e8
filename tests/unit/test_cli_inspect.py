"""``safeload inspect``'s severity ranking and the inspection's reading of a manifest tree (no jail)."""

from __future__ import annotations

from typing import Any

import pytest

from safeload._loading.inspect import tensor_table
from safeload.cli.inspect import classify


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("posix", "system"),
        ("os", "system"),
        ("nt", "system"),
        ("subprocess", "Popen"),
        ("builtins", "eval"),
        ("builtins", "exec"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("__builtin__", "eval"),
        ("importlib", "import_module"),
        ("importlib.machinery", "SourceFileLoader"),
        ("pickle", "loads"),
        ("marshal", "loads"),
        ("types", "FunctionType"),
        ("ctypes", "CDLL"),
        ("socket", "socket"),
        ("shutil", "rmtree"),
        ("sys", "modules"),
        ("runpy", "run_path"),
        ("pkgutil", "resolve_name"),
        ("pydoc", "locate"),
        ("operator", "methodcaller"),
        ("operator", "attrgetter"),
        ("functools", "partial"),
        ("code", "InteractiveInterpreter"),
        ("pty", "spawn"),
        ("webbrowser", "open"),
        ("torch.hub", "load"),
        ("torch", "load"),
        ("numpy", "load"),
    ],
)
def test_code_bearing(module: str, name: str) -> None:
    assert classify(module, name, "stub") == "code-bearing"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("torch.nn.modules.linear", "Linear"),
        ("pytorch_lightning.callbacks", "ModelCheckpoint"),
        ("transformers.configuration_utils", "PretrainedConfig"),
        ("operator", "add"),
        ("ossify", "thing"),  # a prefix of "os" is not "os"
    ],
)
def test_other_stubs_are_stubs(module: str, name: str) -> None:
    assert classify(module, name, "stub") == "stub"


def test_allowlisted_data_stays_data() -> None:
    assert classify("torch._utils", "_rebuild_tensor_v2", "data") == "data"
    assert classify("builtins", "set", "data") == "data"  # the worker allowlists it; not a stub


def _tensor(storage: int, shape: list[int], dtype: str = "float32", **extra: Any) -> dict[str, Any]:
    stride = [1] * len(shape)
    return {"t": "tensor", "storage": storage, "offset": 0, "shape": shape, "stride": stride, "dtype": dtype,
            **extra}


def _s(v: str) -> dict[str, Any]:
    return {"t": "str", "v": v}


def test_walker_names_paths_sizes_and_sharing() -> None:
    root = {
        "t": "dict",
        "items": [
            [_s("model"), {"t": "odict", "items": [
                [_s("emb.weight"), _tensor(0, [4, 2], id=1)],
                [_s("head.weight"), {"t": "ref", "id": 1}],
                [_s("bias"), _tensor(1, [2], "bfloat16")],
            ]}],
            [_s("p"), {"t": "parameter", "data": _tensor(2, [3], "int8"), "requires_grad": False}],
            [_s("arr"), {"t": "ndarray", "storage": 3, "dtype": "<f8", "shape": [2, 2], "order": "C"}],
            [_s("opt"), {"t": "list", "items": [_tensor(0, [8])]}],
            [_s("hook"), {"t": "stub", "module": "posix", "name": "system", "called": True,
                          "args": {"t": "tuple", "items": [_s("id")]}, "state": None}],
        ],
    }  # fmt: skip
    got = {t.name: t for t in tensor_table(root)}
    assert set(got) == {"model.emb.weight", "model.head.weight", "model.bias", "p", "arr", "opt[0]"}
    assert got["model.emb.weight"].nbytes == 32 and got["model.bias"].nbytes == 4
    assert got["p"].kind == "parameter" and got["p"].nbytes == 3
    assert got["arr"].kind == "ndarray" and got["arr"].nbytes == 32
    assert set(got["model.emb.weight"].shared_with) == {"model.head.weight", "opt[0]"}
    assert got["model.bias"].shared_with == ()


def test_parameter_over_an_earlier_tensor_and_module_state_names() -> None:
    root = {
        "t": "dict",
        "items": [
            [_s("w"), _tensor(0, [2], id=1)],
            [_s("p"), {"t": "parameter", "data": {"t": "ref", "id": 1}, "requires_grad": True, "id": 2}],
            [_s("again"), {"t": "ref", "id": 2}],
            [_s("model"), {"t": "stub", "module": "torch.nn.modules.linear", "name": "Linear",
                           "called": False, "args": None, "kwargs": None, "listitems": [], "dictitems": [],
                           "state": {"t": "dict", "items": [[_s("_parameters"), {"t": "odict", "items": [
                               [_s("weight"), _tensor(1, [2, 2])]]}]]}}],
        ],
    }  # fmt: skip
    got = {t.name: t for t in tensor_table(root)}
    assert set(got) == {"w", "p", "again", "model.weight"}
    assert got["p"].kind == "parameter" and got["p"].nbytes == 8 and got["p"].storage == 0
    assert got["again"].kind == "parameter" and set(got["w"].shared_with) == {"p", "again"}
    assert got["model.weight"].nbytes == 16
