"""An object that leaves a trace when it is rebuilt: by an unpickler (``__reduce__``) or by skops
(``__setstate__``), for models logged with mlflow's own client in tests.

mlflow reloads a skops model while saving it, to check it; so the trace is written only when the canary's
folder exists. The tests log their attack models first and create the folder before loading them, so a
canary file afterwards means the payload ran in the loading process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Tripwire", "payload_code"]


def payload_code(canary: str) -> str:
    """Python source that appends ``ran`` to ``canary`` if its folder exists."""
    return f"try:\n    open({canary!r}, 'a').write('ran')\nexcept OSError:\n    pass\n"


class Tripwire:
    """Appends ``ran`` to ``canary`` when rebuilt by pickle or skops (if the canary's folder exists)."""

    def __init__(self, canary: str) -> None:
        self.canary = str(canary)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import builtins

        return (builtins.exec, (payload_code(self.canary),))

    def __setstate__(self, state: dict[str, Any]) -> None:
        exec(payload_code(str(state.get("canary"))))
        self.__dict__.update(state)
