"""Importing safeload (and its CLI) never imports a library that is only an optional extra."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("sentence_transformers", "peft", "diffusers", "timm")


def test_importing_safeload_imports_no_optional_library() -> None:
    code = (
        "import sys, safeload, safeload.cli, safeload.hub, safeload.transformers\n"
        f"print([m for m in {OPTIONAL!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
