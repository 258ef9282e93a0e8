"""safeload: load models without running code from strangers.

``safeload.load`` is a drop-in for ``torch.load`` that opens pickle-family checkpoints only inside a
bubblewrap jail; ``safeload.transformers`` and ``safeload.hub`` are drop-ins that resolve names only
through the allowlist in ``trust.toml``, at pinned revisions, with pinned hashes and signatures.
"""

import importlib
from typing import TYPE_CHECKING, Any

from safeload._stub import Stub
from safeload.errors import (
    AuditLogError,
    BomError,
    DeviceUnavailableError,
    EvaluationError,
    IntegrityError,
    MissingModuleError,
    PolicyError,
    RegistryUnavailableError,
    SafeloadError,
    SandboxError,
    SandboxLimitError,
    SandboxTimeoutError,
    SandboxUnavailableError,
    SignatureError,
    StoreAccessError,
    UnsafeContentError,
    UnsafeStoreError,
    UnsupportedFormatError,
    UntrustedSourceError,
)

if TYPE_CHECKING:
    from safeload._loading.jail_tier import jail_tier
    from safeload._loading.loader import load, state_dict
    from safeload._patching import patch, unpatch

__version__ = "0.1.0"

# Imported on first use: the loader needs torch (about a second to import), and the command line's
# policy, store and BOM commands should not pay for it.
_LAZY = {
    "jail_tier": "safeload._loading.jail_tier",
    "load": "safeload._loading.loader",
    "state_dict": "safeload._loading.loader",
    "patch": "safeload._patching",
    "unpatch": "safeload._patching",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'safeload' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
    "Stub",
    "UnsafeContentError",
    "UnsafeStoreError",
    "UnsupportedFormatError",
    "UntrustedSourceError",
    "__version__",
    "jail_tier",
    "load",
    "patch",
    "state_dict",
    "unpatch",
]
