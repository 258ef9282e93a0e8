"""CycloneDX documents checked against the JSON schema of the version they declare.

One check for both directions: the BOM a registry attaches to a model (any of CycloneDX 1.4-1.6, kept
only if valid) and the ML-BOM safeload writes (1.6, never written unless valid).
"""

from __future__ import annotations

import json

from safeload.errors import IntegrityError

__all__ = ["check_upstream_bom", "schema_error"]


def schema_error(text: str, version: str) -> str | None:
    """Why the JSON ``text`` does not validate against CycloneDX ``version``'s schema, or None if it does."""
    from cyclonedx.schema import SchemaVersion  # the schema library takes ~0.2 s to import
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.from_version(version)).validate_str(text)
    return None if error is None else str(error)


# The CycloneDX versions an upstream BOM may be written in (each validated against its own schema).
_UPSTREAM_VERSIONS = ("1.4", "1.5", "1.6")


def check_upstream_bom(data: bytes, what: str) -> str | None:
    """Check that ``data`` is a CycloneDX JSON BOM that validates against the schema of the version it
    declares; returns its BOM-Link (``urn:cdx:<serial>/<version>``), or None when it has no serial.

    Raises:
        IntegrityError: not JSON, not CycloneDX, an unsupported version, or it fails its schema.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntegrityError(f"{what}: the attached BOM is not JSON; it was not kept") from None
    spec = doc.get("specVersion") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX" or spec not in _UPSTREAM_VERSIONS:
        raise IntegrityError(
            f"{what}: the attached BOM is not a CycloneDX {'/'.join(_UPSTREAM_VERSIONS)} JSON document "
            f"(specVersion {spec!r}); it was not kept"
        )
    error = schema_error(data.decode("utf-8"), str(spec))
    if error is not None:
        raise IntegrityError(
            f"{what}: the attached BOM does not validate against CycloneDX {spec}: {error}; the model was "
            "not stored"
        )
    serial, version = doc.get("serialNumber"), doc.get("version", 1)
    if isinstance(serial, str) and serial.startswith("urn:uuid:") and isinstance(version, int):
        return f"urn:cdx:{serial.removeprefix('urn:uuid:')}/{version}"
    return None
