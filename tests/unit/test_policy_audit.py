"""The audit log: one JSON object per line, whole lines even with several writers at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safeload._trust.audit import record
from safeload.errors import PolicyError
from safeload.policy import Policy

REPO = Path(__file__).resolve().parents[2]

WRITER = """
import sys
from pathlib import Path
from safeload._trust.audit import record
from safeload.policy import Policy
policy = Policy(audit_log=Path(sys.argv[1]))
for i in range(300):
    record(policy, name=f"w{sys.argv[2]}", decision="allow", reason="x" * 2000, files={"f": str(i)})
"""


def test_record_writes_one_json_line_with_time_and_mode(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "audit.jsonl"
    policy = Policy(audit_log=log, mode="audit")
    entry = record(policy, name="acme/m", decision="allow", files={"a": "sha256:00"}, path=tmp_path)
    line = json.loads(log.read_text())
    assert line == entry | {"path": str(tmp_path)}
    assert line["mode"] == "audit" and line["time"].endswith("Z") and line["name"] == "acme/m"
    assert record(Policy(), name="x", decision="allow") is None  # no audit_log: nothing written


@pytest.mark.slow
def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(n)], env=env) for n in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = log.read_text().splitlines()
    assert len(lines) == 1200
    parsed = [json.loads(line) for line in lines]
    assert {p["name"] for p in parsed} == {"w0", "w1", "w2", "w3"}


def test_unwritable_log_fails_the_load(tmp_path: Path) -> None:
    (tmp_path / "dir-not-file").mkdir()
    with pytest.raises(PolicyError, match="audit_log: cannot append"):
        record(Policy(audit_log=tmp_path / "dir-not-file"), name="x", decision="allow")
