"""The README's first command runs examples/demo.py; it must keep working and keep proving its claims."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


@pytest.mark.slow
def test_demo_runs_and_shows_each_claim() -> None:
    proc = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600, check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(Path.home())},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "the payload came back inert: Stub(posix.system)" in out
    assert "marker file exists on the host: False" in out
    assert "posix.system" in out and "code-bearing" in out
    assert "bit-identical to model.safetensors: True" in out
    assert "identical: True" in out
    assert "after one flipped bit in the registry: IntegrityError" in out
    assert "a name the policy does not pin: UntrustedSourceError" in out
