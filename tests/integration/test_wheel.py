"""The built wheel claims no import name but ``safeload``; its jail works from a project with a ``sandbox``.

A project folder with a ``sandbox/`` package of its own (a common name) used to shadow the worker:
``import safeload`` then a load failed with ``No module named 'sandbox.worker'`` after running the
project's ``sandbox/__init__.py``. The wheel is built from this checkout, installed into a fresh folder,
and used from such a project.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.users import REPO, shared_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip_wheel, "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("safeload-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Iterator[Path]:
    # Under /tmp and world-readable: the jail's user must reach the worker's source.
    with shared_folder("safeload-wheel-") as target:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
            check=True,
            capture_output=True,
        )
        for dirpath, dirs, files in os.walk(target):
            for name in dirs:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o644)
        yield target


def test_wheel_ships_the_worker_inside_safeload(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(top_level).decode().split() == ["safeload"]
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"safeload"}
    assert "safeload/_sandbox/worker/__main__.py" in names
    assert "safeload/_sandbox/worker/_unpickle.py" in names
    assert "safeload/_jail/launcher.py" in names


def test_load_from_a_project_with_its_own_sandbox_package(installed: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "sandbox").mkdir(parents=True)
    trace = tmp_path / "project-sandbox-imported"
    (project / "sandbox" / "__init__.py").write_text(f"open({str(trace)!r}, 'w').close()\n")
    (project / "sandbox" / "worker.py").write_text("raise SystemExit('the project sandbox/worker ran')\n")
    weights = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(3)}
    torch.save(weights, project / "ckpt.pt")
    (project / "main.py").write_text(
        "import safeload, torch\n"
        "sd = safeload.load('ckpt.pt')\n"
        "print(safeload.__file__)\n"
        "print(safeload.jail_tier())\n"
        "print(sorted(sd), sd['w'].sum().item(), sd['b'].tolist())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFELOAD_")}
    env["PYTHONPATH"] = str(installed)
    env["HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "main.py"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    where, tier, result = out.stdout.splitlines()[-3:]
    assert where.startswith(str(installed)), "the installed wheel, not this checkout, must be under test"
    assert tier in {"full", "namespaces", "landlock"}
    assert result == "['b', 'w'] 66.0 [1.0, 1.0, 1.0]"
    assert not trace.exists(), "the project's own sandbox package was imported"
