"""Writing ``trust.toml`` files for tests.

from tests.helpers.trust import pins, write_policy
path = write_policy(tmp_path / "trust.toml", store=tmp_path / "store",
                    registries={"hub": {"kind": "huggingface", "endpoint": hub.endpoint}},
                    models={"acme/m": {"registry": "hub", "repo": "org/name", "revision": sha,
                                       "files": pins(files)}})
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["dump_toml", "folder_pins", "pins", "sha256_of", "write_policy"]


def sha256_of(content: bytes | Path) -> str:
    data = content.read_bytes() if isinstance(content, Path) else content
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pins(files: Mapping[str, bytes | Path]) -> dict[str, str]:
    """``{relpath: "sha256:<hex>"}`` for a files mapping as given to ``HubServer.add_repo``."""
    return {rel: sha256_of(content) for rel, content in files.items()}


def folder_pins(folder: Path) -> dict[str, str]:
    """``{relpath: "sha256:<hex>"}`` of every file under ``folder`` (what ``safeload pin dir://`` writes)."""
    return {p.relative_to(folder).as_posix(): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer: top-level scalars, then one table per nested mapping (two levels deep)."""
    out = [f"{json.dumps(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for key, table in data.items():
        if not isinstance(table, Mapping):
            continue
        plain = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        if plain or not table:
            out.append(f"\n[{json.dumps(key)}]")
            out.extend(f"{json.dumps(k)} = {_value(v)}" for k, v in plain.items())
        for sub, body in table.items():
            if isinstance(body, Mapping):
                out.append(f"\n[{json.dumps(key)}.{json.dumps(sub)}]")
                out.extend(f"{json.dumps(k)} = {_value(v)}" for k, v in body.items())
    return "\n".join(out) + "\n"


def write_policy(
    path: Path,
    *,
    store: Path,
    registries: Mapping[str, Mapping[str, Any]] | None = None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    signers: Mapping[str, Mapping[str, Any]] | None = None,
    files: Mapping[str, str] | None = None,
    mode: str = "enforce",
    audit_log: Path | None = None,
    **top: Any,
) -> Path:
    data: dict[str, Any] = {"version": 1, "mode": mode, "store": str(store), **top}
    if audit_log is not None:
        data["audit_log"] = str(audit_log)
    for key, table in (
        ("registries", registries),
        ("signers", signers),
        ("models", models),
        ("files", files),
    ):
        if table:
            data[key] = table
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(data))
    return path
