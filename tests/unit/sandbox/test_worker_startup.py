"""The worker's start-up cost is mostly imports: keep the heavy modules out of a plain run."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

_SANDBOX = Path(__file__).resolve().parents[3] / "sandbox"
# Each of these costs milliseconds to import (json and re together ~9 ms; typing ~10 ms).
_HEAVY = {"re", "json", "typing", "enum", "collections", "tarfile", "bz2", "lzma", "ast", "base64"}

_CHILD = """
import sys
sys.path[:0] = [sys.argv[1]]
from worker.__main__ import main
code = main(["--mode", "inert", "--in", sys.argv[2], "--out", sys.argv[3]])
print(code, " ".join(sorted(sys.modules)))
"""


def test_a_plain_run_imports_nothing_heavy(tmp_path: Path) -> None:
    artifact = tmp_path / "x.pkl"
    artifact.write_bytes(pickle.dumps({"a": [1, 2.5, "s", b"b", None]}, protocol=4))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD, str(_SANDBOX), str(artifact), str(out)],
                          capture_output=True, text=True, timeout=60, check=True)
    code, modules = proc.stdout.split(" ", 1)
    assert code == "0", proc.stderr
    assert _HEAVY.isdisjoint(modules.split()), sorted(_HEAVY & set(modules.split()))
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest["root"]["t"] == "dict"
