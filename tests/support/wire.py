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


@cache
def _registry() -> Registry[Any]:
    resources = []
    for path in WIRE_DIR.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((path.name, Resource.from_contents(schema)))
    return Registry().with_resources(resources)


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((WIRE_DIR / f"{name}.json").read_text())
    return Draft202012Validator(schema, registry=_registry())


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
