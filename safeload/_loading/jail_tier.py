"""Which jail tier this process's pickle loads and registry downloads run in, under a policy."""

from __future__ import annotations

import os

from safeload.policy import Policy, load_policy

__all__ = ["jail_tier"]


def jail_tier(policy: Policy | str | os.PathLike[str] | None = None) -> str:
    """The jail tier jailed work gets here: ``"full"``, ``"namespaces"`` or ``"landlock"``.

    The strongest tier this host or container offers at or above the policy's ``[sandbox] weakest_jail``
    (``$SAFELOAD_JAIL`` may pick a weaker available one, never one below that floor). The answer is
    probed once per process; ``safeload doctor`` explains it.

    Raises:
        PolicyError: the policy cannot be read or is invalid.
        SandboxUnavailableError: no tier at or above the floor runs here; the message names each
            refused tier's cause and fix.
    """
    from safeload._jail.launcher import jail_tier as _tier

    return _tier(load_policy(policy).sandbox.weakest_jail)
