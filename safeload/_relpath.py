"""Repository-relative file names: the one rule the policy, the registries and the store all apply."""

from __future__ import annotations

__all__ = ["is_safe_relpath"]


def is_safe_relpath(rel: str) -> bool:
    """Whether ``rel`` names a file inside a model folder: relative, ``/``-separated, no empty, ``.`` or
    ``..`` parts, no backslash or NUL (which would name it ambiguously or escape the folder)."""
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\\" not in rel
        and "\0" not in rel
        and all(p not in {"", ".", ".."} for p in rel.split("/"))
    )
