"""The errors safeload raises.

Every security decision that refuses a load raises a subclass of :class:`SafeloadError`, so callers can
tell tampering (``IntegrityError``, ``SignatureError``) from policy typos (``PolicyError``) and from a
sandbox that could not do its job (``SandboxError``). Each message says what happened and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AuditLogError",
    "BomError",
    "DeviceUnavailableError",
    "EvaluationError",
    "IntegrityError",
    "MissingModuleError",
    "PolicyError",
    "RegistryUnavailableError",
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
    """``trust.toml`` is malformed; the message names the dotted path of the bad field, and ``field`` holds
    that path (``models."acme/sentiment".revision``) when one field is to blame, else None."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AuditLogError(PolicyError):
    """The audit log ``trust.toml`` names cannot be appended to (permissions, a folder in the way, a full
    disk), so the load it would record fails. ``field`` is ``"audit_log"`` and ``path`` the log's path. A
    ``PolicyError`` too, which is what this failure raised before it had a type of its own."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, field="audit_log")
        self.path = path


class UntrustedSourceError(SafeloadError):
    """A name or path is not allowed by the policy (not pinned, unknown registry, branch revision)."""


class IntegrityError(SafeloadError):
    """Bytes do not match their pinned sha256 digest, or what a registry or the store holds is not what
    it must be. Where one file's digest is to blame, ``path`` names the file (or what stands for it in
    the message), ``expected`` is the pinned ``sha256:<hex>`` and ``actual`` the one its bytes have;
    each is None where the check does not know it."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


class RegistryUnavailableError(SafeloadError):
    """A registry could not be reached: the connection was refused or timed out, its name did not
    resolve, the TLS handshake failed, the answer was cut short, or the server answered with a 5xx
    (or 429) error. Nothing it sent was trusted or stored; trying again later, or fixing the endpoint,
    the network or the CA bundle the message names, is the remedy. Unlike ``IntegrityError``, nothing
    says the registry lied."""


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


class BomError(SafeloadError):
    """The BOM could not be built, or the document built does not validate against CycloneDX 1.6."""


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
