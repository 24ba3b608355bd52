"""Validate raw Redis field maps against the published wire schemas (contracts/schemas/wire/).

Every entry a service test reads goes through :func:`validate_entry` (tests/service/support.py's
JobReader), so an entry the worker writes that the published schemas do not describe fails a test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from contracts.schema import WIRE_DIR

__all__ = ["as_strings", "validate_entry"]


def _strict(path: Any) -> dict[str, Any]:
    """A published schema, with unlisted fields refused: the published ones allow them (readers
    ignore unknown fields), but every field the worker writes must be documented, so the suite
    validates against this stricter form."""
    schema: dict[str, Any] = json.loads(path.read_text())
    if schema.get("additionalProperties") is True:
        schema["additionalProperties"] = False
    return schema


@cache
def _registry() -> Registry[Any]:
    resources = [(path.name, Resource.from_contents(_strict(path))) for path in WIRE_DIR.glob("*.json")]
    return Registry().with_resources(resources)


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_strict(WIRE_DIR / f"{name}.json"), registry=_registry())


def as_strings(fields: Mapping[Any, Any]) -> dict[str, str]:
    """A field map as a JSON validator sees it: names and values as text (raw bytes as latin-1)."""
    out = {}
    for key, value in fields.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes):
            raw = name == "data" or name.startswith("orig:")
            out[name] = value.decode("latin-1") if raw else value.decode()
        else:
            out[name] = str(value)
    return out


def validate_entry(name: str, fields: Mapping[Any, Any]) -> None:
    """Raise ``AssertionError`` naming every problem unless ``fields`` validates against ``<name>.json``
    (the JSON text inside ``request`` and ``labels`` fields is checked too)."""
    text = as_strings(fields)
    errors = [f"{'/'.join(map(str, e.path)) or '.'}: {e.message}" for e in _validator(name).iter_errors(text)]
    for field, schema_name in (("labels", None), ("request", "trace_request")):
        if field in text and (name != "request_entry" or field == "request"):
            try:
                json.loads(text[field])
            except ValueError as exc:
                errors.append(f"{field}: not JSON ({exc})")
        del schema_name
    assert not errors, f"{name}: {errors} in {text}"
