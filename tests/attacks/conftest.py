"""Shared set-up for the attack suite: one set of artifacts, one listener, one secret per test module.

Everything a payload could touch on the host lives under one folder whose name is unique to the run (the
"marker"): the canary folder, the store, the temporary folders the sandbox writes into. A process that
outlived a load is found by that marker in its mounts or open files.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from safeload.errors import SafeloadError
from safeload.policy import Policy, SandboxSettings
from tests.attacks.generate import ATTACKS, Attack, Trace, write_all
from tests.helpers.canary import (
    Listener,
    SignalCounter,
    find_secret,
    leftover_processes,
    process_table,
    secret_in_tree,
)

SECRET_ENV = "SAFELOAD_ATTACK_SECRET"


@dataclass
class AttackEnv:
    root: Path  # the marker folder
    trace: Trace
    secret: str
    listener: Listener
    signals: SignalCounter
    paths: dict[str, Path]
    pins: dict[str, str]
    store: Path
    scratch: Path  # tempfile.tempdir during the loads: every folder the sandbox writes lives here

    def policy(self, *, timeout_s: float, memory_bytes: int, max_output_bytes: int = 256 << 20) -> Policy:
        sandbox = SandboxSettings(timeout_s=timeout_s, memory_bytes=memory_bytes,
                                  max_output_bytes=max_output_bytes)
        return Policy(store=self.store, sandbox=sandbox, files=dict(self.pins))


@pytest.fixture(scope="module")
def attack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackEnv]:
    # Module scope: the secret in os.environ and the redirected tempfile folder must not outlive the
    # attack tests (building the artifacts takes milliseconds).
    # pytest picks its own base folder from tempfile on first use: settle it before the redirection.
    tmp_path_factory.getbasetemp()
    # Not under pytest's tmp folder: the jail drops to an unprivileged uid, which must be able to search
    # the path to its output folder (the caller's "home" below stays private, as a real one would).
    root = Path(tempfile.mkdtemp(prefix=f"safeload-attacks-{secrets.token_hex(4)}-"))
    root.chmod(0o711)
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    home.chmod(0o700)
    secret = f"SECRET-{secrets.token_hex(16)}"
    secret_file = home / ".ssh" / "id_attack"
    secret_file.write_text(secret)
    canary_dir = root / "canary"
    canary_dir.mkdir()
    listener = Listener()
    signals = SignalCounter(signal.SIGUSR1)
    trace = Trace(canary_dir / "pwned", listener.port, SECRET_ENV, secret_file, os.getpid(), signal.SIGUSR1)
    paths = write_all(root / "artifacts", trace)
    pins = {str(p.resolve()): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in paths.values()}
    scratch = root / "scratch"
    scratch.mkdir(mode=0o711)
    store = root / "store"
    env = AttackEnv(root, trace, secret, listener, signals, paths, pins, store, scratch)
    saved_env = os.environ.get(SECRET_ENV)
    saved_tmp = tempfile.tempdir
    os.environ[SECRET_ENV] = secret  # the caller's environment holds the secret for the whole run
    tempfile.tempdir = str(scratch)
    try:
        yield env
    finally:
        tempfile.tempdir = saved_tmp
        if saved_env is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = saved_env
        # Traces a payload might leave late (a process started by a load, still running).
        time.sleep(0.5)
        late_canary = trace.canary.exists()
        late_connections = listener.connections
        late_signals = signals.count
        listener.close()
        signals.close()
        shutil.rmtree(root, ignore_errors=True)
        assert not late_canary, "a payload wrote the canary file on the host"
        assert late_connections == 0, "a payload connected to the host's loopback listener"
        assert late_signals == 0, "a payload signalled the test process"


@dataclass
class Outcome:
    result: Any
    error: SafeloadError | None
    elapsed: float


def run_load(
    env: AttackEnv, attack: Attack, *, unpickler: str, timeout_s: float, memory_bytes: int,
    weights_only: bool | None = None,
) -> Outcome:
    """Load ``attack``'s artifact through safeload and assert it left no trace on the host."""
    import safeload

    before = process_table()
    connections = env.listener.connections
    signals = env.signals.count
    start = time.monotonic()
    result: Any = None
    error: SafeloadError | None = None
    try:
        result = safeload.load(  # type: ignore[attr-defined]
            str(env.paths[attack.name]),
            weights_only=weights_only,
            policy=env.policy(timeout_s=timeout_s, memory_bytes=memory_bytes),
            unpickler=unpickler,
        )
    except SafeloadError as exc:
        error = exc
    elapsed = time.monotonic() - start

    assert not env.trace.canary.exists(), f"{attack.name}: the payload wrote the canary on the host"
    assert list(env.trace.canary.parent.iterdir()) == [], f"{attack.name}: a payload wrote beside the canary"
    assert env.listener.connections == connections, f"{attack.name}: the payload reached the host's listener"
    assert env.signals.count == signals, f"{attack.name}: the payload signalled the test process"
    assert find_secret(result, env.secret) == [], f"{attack.name}: the caller's secret is in the result"
    for folder in (env.scratch, env.store):
        if folder.exists():
            assert secret_in_tree(folder, env.secret) == [], f"{attack.name}: the secret is in {folder}"
    if error is not None:
        assert env.secret not in str(error), f"{attack.name}: the secret is in the error message"
    # The load must not return while anything it started still runs; allow a moment for reaping.
    deadline = time.monotonic() + 1.0
    left = leftover_processes(before, env.root.name)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = leftover_processes(before, env.root.name)
    assert left == [], f"{attack.name}: processes outlived the load: {left}"
    return Outcome(result, error, elapsed)


def attack_ids(attacks: tuple[Attack, ...] = ATTACKS) -> list[str]:
    return [a.name for a in attacks]
