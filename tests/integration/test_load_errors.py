"""Failures a real checkpoint runs into, each as a typed error whose message says what to do: a module
execute mode lacks, storages saved on a device this machine lacks, ``state_dict()`` on what is not a
module (and never a repr of a whole checkpoint in a message)."""

from __future__ import annotations

from pathlib import Path

import pytest

import safeload
from safeload.errors import MissingModuleError, SafeloadError


@pytest.mark.parametrize(
    ("module", "pip"),
    [("omegaconf.dictconfig", "omegaconf"), ("sklearn_crfsuite.estimator", "sklearn_crfsuite"),
     ("sklearn.not_a_module", "scikit-learn")],
)
def test_execute_mode_names_the_missing_module(tmp_path: Path, module: str, pip: str) -> None:
    # What a Lightning checkpoint's hyper-parameters or a pickled CRF model reference.
    path = tmp_path / "needs.pkl"
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\nThing\n)\x81}U\x01aK\x01sb.")
    with pytest.raises(MissingModuleError) as info:
        safeload.load(path, unpickler="execute")
    exc = info.value
    assert isinstance(exc, ModuleNotFoundError) and isinstance(exc, SafeloadError)
    assert exc.name is not None and module.startswith(exc.name)
    message = str(exc)
    assert f"the checkpoint needs the module {exc.name}" in message
    assert f"pip install {pip}" in message and "inertly" in message
    # Inert loading (the default) needs nothing installed: the class is a stub.
    stub = safeload.load(path)
    assert isinstance(stub, safeload.Stub) and stub.qualname == f"{module}.Thing"
    assert stub.state == {"a": 1}
