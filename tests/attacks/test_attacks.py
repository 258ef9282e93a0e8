"""Every malicious artifact, through both unpicklers: no trace on the host, bounded time, no process left.

Inert mode never calls a global, so code-bearing globals must come back as ``safeload.Stub`` values and
``weights_only=True`` must refuse them by name. Execute mode runs the payload for real, inside the jail:
the load may succeed or fail with a typed error, but nothing may reach the host; denial-of-service
payloads must end in a timeout or limit error, and payloads that tamper with the worker's output must end
in a ``SandboxError`` without the host ever reading what a planted symlink points at.
"""

from __future__ import annotations

import pytest

from safeload.errors import (
    SandboxError,
    SandboxLimitError,
    SandboxTimeoutError,
    UnsafeContentError,
)
from tests.attacks.conftest import AttackEnv, run_load
from tests.attacks.generate import ATTACKS, Attack

# A load that hangs (a host blocked on a planted FIFO, a timeout that never fires) fails its test, not CI.
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("every_jail_tier")]

_MiB = 1 << 20
_GiB = 1 << 30

INERT_TIMEOUT_S = 10.0
INERT_MEMORY = 512 * _MiB
# Execute mode imports torch in the jail (about 1 s, and about 1 GiB of address space).
EXECUTE_TIMEOUT_S = 30.0
EXECUTE_DOS_TIMEOUT_S = 3.0
EXECUTE_MEMORY = 2 * _GiB


# Raw pickles whose whole value is the eval payload's return value: the secret it read, if any.
RUN_IN_JAIL_RETURN_LEAK = {
    "reduce_builtins_eval", "proto0_text", "obj_opcode", "stack_global_memo", "nested_pickle_loads",
}


def _params(attacks: tuple[Attack, ...] | list[Attack]) -> list[object]:
    return [
        pytest.param(a, id=a.name, marks=[pytest.mark.slow] if a.category == "dos" else [])
        for a in attacks
    ]


def test_registry_names_are_unique() -> None:
    names = [a.name for a in ATTACKS]
    assert len(names) == len(set(names))
    assert all(a.description for a in ATTACKS)


@pytest.mark.parametrize("attack", _params(ATTACKS))
def test_inert(attack_env: AttackEnv, attack: Attack) -> None:
    out = run_load(
        attack_env, attack, unpickler="inert", timeout_s=INERT_TIMEOUT_S, memory_bytes=INERT_MEMORY
    )
    assert out.elapsed < INERT_TIMEOUT_S + 5
    if attack.inert_returns:
        from tests.helpers.canary import stubs_in

        assert out.error is None, f"the inert unpickler refused {attack.name}: {out.error!r}"
        missing = set(attack.globals) - stubs_in(out.result)
        assert not missing, f"{attack.name}: no Stub for {sorted(missing)} in {out.result!r}"[:2000]
    if attack.name == "bomb_deep_nesting":
        assert isinstance(out.error, SandboxLimitError), repr(out.error)


@pytest.mark.parametrize("attack", _params([a for a in ATTACKS if a.globals]))
def test_inert_weights_only_names_the_globals(attack_env: AttackEnv, attack: Attack) -> None:
    out = run_load(
        attack_env, attack, unpickler="inert", timeout_s=INERT_TIMEOUT_S, memory_bytes=INERT_MEMORY,
        weights_only=True,
    )
    assert isinstance(out.error, UnsafeContentError), f"{attack.name}: {out.error!r}, result {out.result!r}"
    message = str(out.error)
    for module, name in attack.globals:
        assert module in message and name in message, f"{attack.name}: {module}.{name} not in {message!r}"


@pytest.mark.parametrize("attack", _params(ATTACKS))
def test_execute(attack_env: AttackEnv, attack: Attack) -> None:
    dos = attack.category == "dos"
    timeout = EXECUTE_DOS_TIMEOUT_S if dos else EXECUTE_TIMEOUT_S
    out = run_load(attack_env, attack, unpickler="execute", timeout_s=timeout, memory_bytes=EXECUTE_MEMORY)
    assert out.elapsed < timeout + 10, f"{attack.name}: the load took {out.elapsed:.1f}s"
    if dos:
        assert isinstance(out.error, (SandboxTimeoutError, SandboxLimitError)), (
            f"{attack.name}: expected a timeout or limit error, got {out.error!r} / {out.result!r}"
        )
    if attack.category == "tamper":
        assert isinstance(out.error, SandboxError), (
            f"{attack.name}: tampered output was accepted: {out.result!r}"[:2000]
        )
        message = str(out.error)
        # The payload itself must have run cleanly: the error is the host refusing the tampered output.
        assert "loading the checkpoint raised" not in message, message
        assert attack_env.secret not in message
        assert "root:" not in message, "the host read /etc/shadow through a planted symlink"
    if attack.name == "bomb_deep_nesting":
        assert isinstance(out.error, SandboxLimitError), repr(out.error)
    if attack.name in RUN_IN_JAIL_RETURN_LEAK:
        # The payload really ran (execute mode) and handed back everything it could read: nothing.
        assert out.error is None, repr(out.error)
        assert out.result == "", repr(out.result)[:500]
