"""The payloads work: loaded with the real, unsandboxed loaders they leave every trace the suite looks for.

This is what lets the sandboxed tests fail. Representative artifacts are loaded by ``pickle.loads`` /
``torch.load`` / ``numpy.load(allow_pickle=True)`` in a throwaway subprocess (never in the test process;
one per loader, so torch is imported once), and the test checks each one's canary file, the listener and
the leaked secret.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attacks.conftest import SECRET_ENV, AttackEnv
from tests.attacks.generate import Trace, by_name
from tests.helpers.canary import Listener, SignalCounter

_LOADERS = {
    "pickle": "import pickle\ndef load(p):\n    return pickle.loads(open(p, 'rb').read())\n",
    "torch": "import torch\ndef load(p):\n    return torch.load(p, weights_only=False)\n",
    "numpy": "import numpy\ndef load(p):\n    r = numpy.load(p, allow_pickle=True)\n"
    "    return [r[k] for k in r.files] if hasattr(r, 'files') else r\n",
}
# A payload may break the load after it ran (that is still a trace): report the error as the value.
_DRIVER = (
    "import sys\n"
    "for p in sys.argv[1:]:\n"
    "    try:\n"
    "        r = load(p)\n"
    "    except Exception as exc:\n"
    "        r = exc\n"
    "    print(p, repr(r), flush=True)\n"
)

# loader -> [(artifact, whether the payload hands the secret back in the loaded value)]
REPRESENTATIVE: dict[str, list[tuple[str, bool]]] = {
    "pickle": [
        ("reduce_os_system", False),
        ("reduce_subprocess_popen", False),
        ("reduce_builtins_eval", True),
        ("getattr_chain", False),
        ("pydoc_locate", False),
        ("operator_methodcaller", False),
        ("marshal_code", False),
        ("proto0_text", True),
        ("inst_opcode", False),
        ("obj_opcode", True),
        ("stack_global_memo", True),
        ("nested_pickle_loads", True),
        ("rebuild_from_type_v2", False),
    ],
    "torch": [
        ("torch_zip", True), ("torch_legacy", True), ("torch_legacy_tar", False), ("zip_cd_renamed", True),
        ("zip_bad_crc", True),
    ],
    "numpy": [("numpy_object_npy", True), ("numpy_npz", True)],
}


# One real-time signal per payload: Python runs a handler once for however many deliveries of one signal
# arrived since it last looked, so a shared signal could under-count payloads that did signal.
_FIRST_SIGNAL = signal.SIGRTMIN + 3


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    # Not the sandboxed tests' listener: that one must never count a connection.
    own = Listener()
    yield own
    own.close()


@pytest.fixture
def signals() -> Iterator[list[SignalCounter]]:
    # Not the SIGUSR1 the sandboxed tests watch.
    count = max(len(cases) for cases in REPRESENTATIVE.values())
    assert _FIRST_SIGNAL + count - 1 <= signal.SIGRTMAX
    counters = [SignalCounter(_FIRST_SIGNAL + i) for i in range(count)]
    yield counters
    for counter in counters:
        counter.close()


@pytest.mark.parametrize("loader", sorted(REPRESENTATIVE))
def test_payloads_leave_traces_when_loaded_unsandboxed(
    attack_env: AttackEnv, listener: Listener, signals: list[SignalCounter], tmp_path: Path, loader: str
) -> None:
    cases = REPRESENTATIVE[loader]
    traces: dict[str, Trace] = {}
    artifacts: list[str] = []
    for i, (name, _) in enumerate(cases):
        folder = tmp_path / name
        folder.mkdir()
        traces[name] = Trace(folder / "pwned", listener.port, SECRET_ENV, attack_env.trace.secret_file,
                             os.getpid(), _FIRST_SIGNAL + i)
        (folder / "artifact").write_bytes(by_name(name).build(traces[name]))
        artifacts.append(str(folder / "artifact"))
    before = listener.connections
    proc = subprocess.run(
        [sys.executable, "-c", _LOADERS[loader] + _DRIVER, *artifacts],
        env={**os.environ, SECRET_ENV: attack_env.secret}, capture_output=True, text=True, timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)

    def all_traces_seen() -> bool:
        signalled = all(c.count for c in signals[: len(cases)])
        files = all((t.canary.parent / "leak.txt").exists() and t.canary.exists() for t in traces.values())
        return listener.connections - before >= len(cases) and signalled and files

    deadline = time.monotonic() + 10  # Popen's child finishes on its own schedule
    while not all_traces_seen() and time.monotonic() < deadline:
        time.sleep(0.05)
    for (name, returns_secret), artifact in zip(cases, artifacts):
        trace = traces[name]
        assert trace.canary.exists(), f"{name}: the payload did not write its canary"
        leak = trace.canary.parent / "leak.txt"
        assert attack_env.secret in leak.read_text(), f"{name}: the payload did not read the secret"
        if returns_secret:
            assert attack_env.secret in printed[artifact], f"{name}: the secret is not in the loaded value"
    assert listener.connections - before >= len(cases), "some payloads did not reach the listener"
    silent = [name for (name, _), c in zip(cases, signals) if not c.count]
    assert not silent, f"these payloads did not signal the test process: {silent}"
