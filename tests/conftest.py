"""Suite-wide fixtures.

Invariant 1 of the design: no artifact byte reaches an unpickler in the host. Every test runs with the
host's unpicklers replaced by functions that fail the test loudly; reference results that need
``torch.load`` are computed in a throwaway subprocess instead (see ``tests/helpers``).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest


class HostUnpicklingError(AssertionError):
    """Raised when code in the test process tries to unpickle."""


def _forbidden(name: str) -> Any:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise HostUnpicklingError(f"{name} was called in the host process during a test")

    return refuse


def _forbidden_class(base: type, name: str) -> type:
    # A class, not a function: libraries subclass Unpickler at import time (torch._dynamo does), and that
    # must keep working; only building an unpickler is refused.
    def __init__(self: object, *args: object, **kwargs: object) -> NoReturn:
        raise HostUnpicklingError(f"{name} was instantiated in the host process during a test")

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})


@pytest.fixture(autouse=True)
def no_host_unpickling(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[None]:
    """Make every host unpickling entry point raise for the duration of each test."""
    if request.node.get_closest_marker("allow_host_unpickling") is not None:
        yield
        return
    import _pickle

    for mod in (pickle, _pickle):
        monkeypatch.setattr(mod, "load", _forbidden(f"{mod.__name__}.load"))
        monkeypatch.setattr(mod, "loads", _forbidden(f"{mod.__name__}.loads"))
        monkeypatch.setattr(mod, "Unpickler", _forbidden_class(mod.Unpickler, f"{mod.__name__}.Unpickler"))
    try:
        import torch
        import torch.serialization
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    else:
        monkeypatch.setattr(torch, "load", _forbidden("torch.load"))
        monkeypatch.setattr(torch.serialization, "load", _forbidden("torch.serialization.load"))
        monkeypatch.setattr(torch.jit, "load", _forbidden("torch.jit.load"))
    import numpy

    real_np_load = numpy.load

    def np_load(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("allow_pickle"):
            raise HostUnpicklingError("numpy.load(allow_pickle=True) was called in the host during a test")
        return real_np_load(*args, **kwargs)

    monkeypatch.setattr(numpy, "load", np_load)
    yield


@pytest.fixture(params=["full", "namespaces", "landlock"])
def every_jail_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once in each jail tier (``$SAFELOAD_JAIL``): every tier must contain every attack."""
    tier: str = request.param
    monkeypatch.setenv("SAFELOAD_JAIL", tier)
    return tier


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_host_unpickling: the test does not load artifacts and may unpickle its own data"
    )
