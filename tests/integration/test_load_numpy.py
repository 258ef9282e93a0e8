"""``safeload.load`` on numpy files and raw pickles, compared bit for bit with the real loaders.

References come from ``numpy.load(allow_pickle=True)`` and ``pickle.load`` in a throwaway subprocess.
"""

from __future__ import annotations

import argparse
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import safeload
from tests.helpers.reference import Described, assert_same, references


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f4": rng.standard_normal((3, 4)).astype(np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 5))),
        "big_endian": np.arange(6, dtype=">i8").reshape(2, 3),
        "zero_d": np.array(2.5, dtype=np.float16),
        "empty": np.zeros((0, 4), dtype=np.int32),
        "bool": np.array([True, False, True]),
        "u1": np.arange(200, dtype=np.uint8),
        "c16": (np.arange(4) + 1j).astype(np.complex128),
    }


def _pickled_values() -> dict[str, Any]:
    shared = [1, "two"]
    return {
        "ints": [0, 1, -1, 255, 65535, 2**31 - 1, -(2**31), 2**64, -(2**200)],
        "floats": [0.5, -0.0, float("inf"), 1e-300],
        "text": ["", "a", "é" * 300, "\u2603"],
        "bytes": [b"", b"\x00" * 300, bytearray(b"xy")],
        "containers": ((), (1,), (1, 2), (1, 2, 3), frozenset({1}), {3, 4}, {"k": None}),
        "shared": [shared, shared],
        "odict": collections.OrderedDict(b=1, a=2),
        "namespace": argparse.Namespace(x=1, y=[2]),
        "complex": complex(1, -1),
        "slice": slice(None, 5),
        "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "fortran": np.asfortranarray(np.ones((2, 2))),
        "scalar": np.float32(3.25),
        "bools": (True, False, None),
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Described]]:
    root = tmp_path_factory.mktemp("np")
    jobs: dict[str, tuple[Path, str]] = {}
    for name, arr in _arrays().items():
        np.save(root / f"{name}.npy", arr)
        jobs[f"npy-{name}"] = (root / f"{name}.npy", "numpy")
    np.save(root / "objects.npy", np.array([1, "a", None, [2.5]], dtype=object), allow_pickle=True)
    jobs["npy-objects"] = (root / "objects.npy", "numpy")
    np.savez(root / "stored.npz", **_arrays())
    jobs["npz-stored"] = (root / "stored.npz", "numpy")
    np.savez_compressed(root / "compressed.npz", **_arrays())
    jobs["npz-compressed"] = (root / "compressed.npz", "numpy")
    for proto in range(6):
        with open(root / f"p{proto}.pkl", "wb") as fh:
            pickle.dump(_pickled_values(), fh, protocol=proto)
        jobs[f"pickle-{proto}"] = (root / f"p{proto}.pkl", "pickle")
    refs = references([(p, loader, None) for p, loader in jobs.values()])
    return {name: (p, ref) for (name, (p, _)), ref in zip(jobs.items(), refs)}


KEYS = [*(f"npy-{n}" for n in _arrays()), "npy-objects", "npz-stored", "npz-compressed",
        *(f"pickle-{p}" for p in range(6))]


@pytest.mark.parametrize("key", KEYS)
def test_matches_reference_loader(artifacts: dict[str, tuple[Path, Described]], key: str) -> None:
    path, ref = artifacts[key]
    assert_same(safeload.load(path), ref)


def test_numeric_npy_is_mapped_from_the_file_and_writable(
    artifacts: dict[str, tuple[Path, Described]],
) -> None:
    path, _ = artifacts["npy-f4"]
    before = path.read_bytes()
    arr = safeload.load(path)
    assert arr.flags.writeable and not arr.flags.owndata
    arr[...] = 0
    assert path.read_bytes() == before


def test_npz_with_pickled_member_objects(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", nums=np.arange(3), objs=np.array([{"a": 1}], dtype=object))
    out = safeload.load(tmp_path / "o.npz")
    assert np.array_equal(out["nums"], np.arange(3))
    assert out["objs"].dtype == object and out["objs"][0] == {"a": 1}


def test_unknown_content_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\x7fELF not a model at all")
    with pytest.raises(safeload.UnsupportedFormatError):
        safeload.load(tmp_path / "x.bin")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(safeload.UnsupportedFormatError):
        safeload.load(tmp_path / "empty")


def test_tensor_in_raw_pickle_without_storages_is_refused(tmp_path: Path) -> None:
    # A raw pickle has no storage records: torch persistent ids cannot resolve, so nothing is built.
    class Saver(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("storage", "x") if isinstance(obj, torch.UntypedStorage) else None

    with open(tmp_path / "t.pkl", "wb") as fh:
        Saver(fh, protocol=2).dump({"t": torch.ones(2).untyped_storage()})
    with pytest.raises(safeload.UnsupportedFormatError, match="persistent"):
        safeload.load(tmp_path / "t.pkl")


def _joblib_value() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        "weights": rng.standard_normal((4, 3)).astype(np.float32),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">f8"),
        "scalar": np.array(3),
        "objects": np.array([{"k": 1}, "s"], dtype=object),
        "meta": {"classes": ["a", "b"], "n": 2},
    }


@pytest.fixture(scope="module")
def joblib_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Described]]:
    import joblib

    root = tmp_path_factory.mktemp("joblib")
    jobs: dict[str, Path] = {}
    for compress in (0, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("xz", 3)):
        name = "plain" if compress == 0 else compress[0]
        joblib.dump(_joblib_value(), root / f"{name}.joblib", compress=compress)
        jobs[name] = root / f"{name}.joblib"
    refs = references([(p, "joblib", None) for p in jobs.values()])
    return {name: (p, ref) for (name, p), ref in zip(jobs.items(), refs)}


@pytest.mark.parametrize("name", ["plain", "zlib", "gzip", "bz2", "xz"])
def test_joblib_matches_joblib_load(joblib_artifacts: dict[str, tuple[Path, Described]], name: str) -> None:
    path, ref = joblib_artifacts[name]
    assert_same(safeload.load(path), ref)


def test_joblib_arrays_are_mapped_from_the_file(joblib_artifacts: dict[str, tuple[Path, Described]]) -> None:
    from safeload._loading.inspect import inspect_artifact

    path, _ = joblib_artifacts["plain"]
    assert inspect_artifact(path).format == "joblib"
    out = safeload.load(path, weights_only=True)  # the wrapper is data, not a stub
    assert not out["weights"].flags.owndata
