"""README's worked provenance example (examples/provenance.py) runs offline and shows each step's claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "provenance.py"


@pytest.mark.slow
def test_the_provenance_example_runs_and_the_gate_catches_the_swap() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=600, check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(Path.home())},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "gate verdict: pass (fetch ok, pins ok, signature ok, evaluation ok, datasets ok)" in out
    assert "loaded through the gate" in out
    assert "gate verdict after the swap: fail (exit 1)" in out
    assert "it evaluated another artifact than the one deployed" in out
    assert "the load is refused too: IntegrityError" in out
