"""safeload: load models without running code from strangers.

``safeload.load`` is a drop-in for ``torch.load`` that opens pickle-family checkpoints only inside a
bubblewrap jail; ``safeload.transformers`` and ``safeload.hub`` are drop-ins that resolve names only
through the allowlist in ``trust.toml``, at pinned revisions, with pinned hashes and signatures.
"""

from safeload.errors import (
    IntegrityError,
    PolicyError,
    SafeloadError,
    SandboxError,
    SandboxLimitError,
    SandboxTimeoutError,
    SandboxUnavailableError,
    SignatureError,
    UnsafeContentError,
    UnsupportedFormatError,
    UntrustedSourceError,
)
from safeload._stub import Stub
from safeload.loader import load, state_dict
from safeload.patching import patch, unpatch

__version__ = "0.1.0"

__all__ = [
    "IntegrityError",
    "PolicyError",
    "SafeloadError",
    "SandboxError",
    "SandboxLimitError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "SignatureError",
    "Stub",
    "UnsafeContentError",
    "UnsupportedFormatError",
    "UntrustedSourceError",
    "__version__",
    "load",
    "patch",
    "state_dict",
    "unpatch",
]
