"""The suite's own guard (tests/conftest.py) must really refuse host unpickling, or invariant 1's tests
would pass vacuously."""

from __future__ import annotations

import io
import pickle

import numpy
import pytest
import torch

from tests.conftest import HostUnpicklingError

_DATA = pickle.dumps({"a": 1})


@pytest.mark.parametrize(
    "call",
    [
        lambda: pickle.loads(_DATA),
        lambda: pickle.load(io.BytesIO(_DATA)),
        lambda: pickle.Unpickler(io.BytesIO(_DATA)).load(),
        lambda: torch.load(io.BytesIO(b"")),
        lambda: numpy.load(io.BytesIO(b""), allow_pickle=True),
    ],
    ids=["pickle.loads", "pickle.load", "pickle.Unpickler", "torch.load", "numpy.load"],
)
def test_host_unpickling_raises(call: object) -> None:
    with pytest.raises(HostUnpicklingError):
        call()  # type: ignore[operator]


def test_unpickler_can_still_be_subclassed() -> None:
    class Custom(pickle.Unpickler):
        pass

    with pytest.raises(HostUnpicklingError):
        Custom(io.BytesIO(_DATA))
