"""The errors safeload raises.

Every security decision that refuses a load raises a subclass of :class:`SafeloadError`, so callers can
tell tampering (``IntegrityError``, ``SignatureError``) from policy typos (``PolicyError``) and from a
sandbox that could not do its job (``SandboxError``). Each message says what happened and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "DeviceUnavailableError",
    "EvaluationError",
    "IntegrityError",
    "MissingModuleError",
    "PolicyError",
    "SafeloadError",
    "SandboxError",
    "SandboxLimitError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "SignatureError",
    "StoreAccessError",
    "UnsafeContentError",
    "UnsafeStoreError",
    "UnsupportedFormatError",
    "UntrustedSourceError",
]


class SafeloadError(Exception):
    """Root of every error safeload raises on purpose."""


class PolicyError(SafeloadError):
    """``trust.toml`` is malformed; the message names the dotted path of the bad field."""


class UntrustedSourceError(SafeloadError):
    """A name or path is not allowed by the policy (not pinned, unknown registry, branch revision)."""


class IntegrityError(SafeloadError):
    """Bytes do not match their pinned sha256 digest."""


class SignatureError(SafeloadError):
    """A model signature is missing, invalid, from the wrong signer, or disagrees with the pins."""


class EvaluationError(SafeloadError):
    """The model's evaluation attestation is missing, or a metric the policy requires does not hold."""


class UnsafeStoreError(SafeloadError):
    """The store, a folder above it, or a folder or file in it can be changed by a user other than the
    caller and root, so its bytes could be swapped after they were verified; nothing is read from it.
    The message names the path and the ``chmod``/``chown`` that fixes it."""


class StoreAccessError(SafeloadError):
    """A load needs to write into the store (a first fetch, a conversion, a lock) and this process may
    not; the message names the path and says to run ``safeload prefetch`` as the store's owner."""


class UnsupportedFormatError(SafeloadError):
    """The file's content is not a format safeload knows how to open safely."""


class DeviceUnavailableError(SafeloadError, RuntimeError):
    """The checkpoint's tensors were saved on a device this machine lacks (a CUDA checkpoint on a CPU-only
    machine) and no ``map_location`` moves them; torch's own words are kept in the message. A
    ``RuntimeError`` too, which is what ``torch.load`` raises there."""


class MissingModuleError(SafeloadError, ModuleNotFoundError):
    """Execute mode: the checkpoint's code imports a module that is not installed in this environment
    (``name`` is the module). A ``ModuleNotFoundError`` too, which is what ``torch.load`` raises there."""


class UnsafeContentError(SafeloadError):
    """The artifact references code-bearing globals and the caller asked for data only."""


class SandboxError(SafeloadError):
    """The jail failed: the worker crashed or returned output that does not validate."""


class SandboxUnavailableError(SandboxError):
    """The jail cannot be started here (no ``bwrap``, no user namespaces)."""


class SandboxTimeoutError(SandboxError):
    """The worker ran past the wall-clock limit and was killed with its process group."""


class SandboxLimitError(SandboxError):
    """The worker hit a resource limit: memory, output size, object or depth budget."""
