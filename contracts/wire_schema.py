"""JSON Schemas of entries as they are on the wire: every value a string, as Redis holds it.

The typed schemas (``contracts/schemas/*.json``) describe the values :func:`contracts.parse_entry`
produces; these (``contracts/schemas/wire/*.json``) describe the field maps a client reads with any
Redis client: integers as decimal text, booleans ``true``/``false``, times RFC 3339, ``labels`` a
JSON object in text, chunk ``data`` raw bytes (a validator sees it as a string of any content).
They are derived from the models, so they cannot drift from what the worker writes; the worker
serves them at ``GET /schemas/<name>.json``. Schemas of entries the worker writes allow properties
they do not list (readers ignore unknown fields; later versions may add some); those of entries
requesters write (request, cancel) do not. Regenerate with ``python -m contracts.schema``.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from contracts.events import REQUEST_ID_PATTERN, CancelEvent, ChunkEvent, ProgressEvent, StatusEvent
from contracts.request import JOB_ID_PATTERN, MAX_REQUEST_BYTES, TraceRequest

__all__ = ["wire_schemas"]

_UINT = r"^(0|[1-9][0-9]*)$"
_INT = r"^-?(0|[1-9][0-9]*)$"
_FLOAT = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([+-][0-9]{2}:[0-9]{2}|Z)$"


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in prop:
        return dict(defs[prop["$ref"].rsplit("/", 1)[1]])
    options = [p for p in prop.get("anyOf", []) if p.get("type") != "null"]
    if len(options) == 1:
        return {
            **_resolve(options[0], defs),
            **{k: v for k, v in prop.items() if k not in ("anyOf", "default")},
        }
    return prop


def _as_wire(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The string form of one typed property."""
    typed = _resolve(prop, defs)
    kind = typed.get("type")
    out: dict[str, Any] = {"type": "string"}
    if "description" in typed:
        out["description"] = typed["description"]
    if kind == "integer":
        out["pattern"] = _UINT if typed.get("minimum", -1) >= 0 else _INT
    elif kind == "number":
        out["pattern"] = _FLOAT
    elif kind == "boolean":
        out["enum"] = ["true", "false"]
    elif kind == "object":
        out["contentMediaType"] = "application/json"
        out["contentSchema"] = {k: v for k, v in typed.items() if k not in ("title", "default")}
    elif typed.get("format") == "date-time":
        out["pattern"] = _TIME
    elif typed.get("format") == "binary":
        out["description"] = "raw bytes (not text, not base64): a whole number of TracePackets"
    else:
        for key in ("enum", "const", "pattern", "maxLength", "minLength"):
            if key in typed:
                out[key] = typed[key]
    return out


def _entry(model: type[BaseModel], title: str, description: str) -> dict[str, Any]:
    typed = model.model_json_schema()
    defs = typed.get("$defs", {})
    props = {name: _as_wire(p, defs) for name, p in typed["properties"].items()}
    # Fields with a non-None default are always written; None defaults are left out when None.
    required = [
        name
        for name, field in model.model_fields.items()
        if field.is_required() or (field.default is not None or field.default_factory is not None)
    ]
    return {
        "title": title,
        "description": description,
        "type": "object",
        "properties": props,
        "required": required,
        # Readers must ignore fields they do not know (PROTOCOL §2.1): later versions may add some.
        "additionalProperties": True,
    }


def _request_schema() -> dict[str, Any]:
    schema = TraceRequest.model_json_schema()
    schema.pop("title", None)
    return schema


def wire_schemas() -> dict[str, dict[str, Any]]:
    """File stem → wire-form JSON Schema, for every entry and hash of the contract."""
    status = _entry(
        StatusEvent, "StatusEntry", "A status entry of <prefix>:job:{<job_id>} and <prefix>:events."
    )
    progress = _entry(ProgressEvent, "ProgressEntry", "A progress entry of <prefix>:job:{<job_id>}.")
    chunk = _entry(
        ChunkEvent, "ChunkEntry", "A chunk entry of <prefix>:job:{<job_id>}; fields in this order."
    )
    cancel = _entry(
        CancelEvent, "CancelAnswerEntry", "The answer to a cancel entry, on <prefix>:job:{<job_id>}."
    )
    state = copy.deepcopy(status)
    state["title"] = "JobStateHash"
    state["description"] = (
        "The hash <prefix>:job:{<job_id>}:state: the job's latest job-level status fields, plus "
        "fingerprint (sha256 of the canonical request that created the job) and started_ms (Redis "
        "clock, ms, when the current attempt started)."
    )
    state["properties"]["fingerprint"] = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    state["properties"]["started_ms"] = {"type": "string", "pattern": _UINT}
    out: dict[str, dict[str, Any]] = {
        "status_entry": status,
        "progress_entry": progress,
        "chunk_entry": chunk,
        "cancel_answer_entry": cancel,
        "job_stream_entry": {
            "title": "JobStreamEntry",
            "description": "Any entry of <prefix>:job:{<job_id>}, by its `type` field.",
            "oneOf": [
                {"$ref": "status_entry.json"},
                {"$ref": "progress_entry.json"},
                {"$ref": "chunk_entry.json"},
                {"$ref": "cancel_answer_entry.json"},
            ],
        },
        "job_state_hash": state,
        "request_entry": {
            "title": "RequestEntry",
            "description": "An entry of <prefix>:requests: one field `request`, a TraceRequest as JSON.",
            "type": "object",
            "properties": {
                "request": {
                    "type": "string",
                    "maxLength": MAX_REQUEST_BYTES,
                    "contentMediaType": "application/json",
                    "contentSchema": _request_schema(),
                }
            },
            "required": ["request"],
            "additionalProperties": False,
        },
        "cancel_entry": {
            "title": "CancelEntry",
            "description": "An entry of <prefix>:cancels (docs/PROTOCOL.md §5).",
            "type": "object",
            "properties": {
                "job_id": {"type": "string", "pattern": JOB_ID_PATTERN},
                "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN},
            },
            "required": ["job_id"],
            "additionalProperties": False,
        },
        "dead_letter": {
            "title": "DeadLetterEntry",
            "description": (
                "An entry of <prefix>:dead: an entry the workers gave up on. The original entry's "
                "fields are copied under 'orig:<field name>' (raw bytes)."
            ),
            "type": "object",
            "properties": {
                "entry_id": {"type": "string", "pattern": REQUEST_ID_PATTERN},
                "deliveries": {"type": "string", "pattern": r"^[1-9][0-9]*$"},
                "reason": {"type": "string"},
                "error_code": {
                    "type": "string",
                    "enum": ["invalid_request", "too_many_deliveries", "internal"],
                },
                "job_id": {"type": "string", "pattern": JOB_ID_PATTERN},
                "truncated": {
                    "type": "string",
                    "description": "original fields cut to bound the entry: name=original length, ...",
                },
            },
            "patternProperties": {"^orig:": {"type": "string"}},
            "required": ["entry_id", "deliveries", "reason", "error_code"],
            "additionalProperties": True,
        },
    }
    for stem, schema in out.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{stem}.json"
    return out
