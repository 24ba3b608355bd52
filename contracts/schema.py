"""JSON Schema of every message of the wire contract, and the files in ``contracts/schemas/``.

Regenerate the files after changing a model (a test fails while they are stale)::

    python -m contracts.schema

Chunk ``data`` is raw bytes on the wire (not base64); the schema marks it ``format: binary``.
Every value on a stream entry is a Redis string: numbers and booleans are written as their text
(``"3"``, ``"true"``) and ``labels`` as a JSON object in text; these schemas describe the typed
values that :func:`contracts.events.parse_entry` produces, and ``schemas/wire/`` (from
:mod:`contracts.wire_schema`) the strings as sent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.events import ChunkEvent, ProgressEvent, StatusEvent
from contracts.request import TraceRequest
from contracts.wire_schema import wire_schemas

__all__ = ["SCHEMA_DIR", "WIRE_DIR", "render", "schemas", "write"]

#: Where the schema files live (shipped with the package).
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
#: The wire-form schemas (every value a string, as sent): contracts.wire_schema.
WIRE_DIR = SCHEMA_DIR / "wire"

_DEAD_LETTER: dict[str, Any] = {
    "title": "DeadLetterEntry",
    "description": (
        "An entry of <prefix>:dead: a request entry the workers gave up on. The original entry's "
        "fields are copied under 'orig:<field name>' (e.g. 'orig:request')."
    ),
    "type": "object",
    "properties": {
        "entry_id": {"type": "string", "description": "Id of the original entry on <prefix>:requests."},
        "deliveries": {"type": "integer", "minimum": 1, "description": "Times it was delivered."},
        "reason": {"type": "string", "description": "Why, in words a person can act on."},
        "error_code": {"type": "string", "enum": ["invalid_request", "too_many_deliveries", "internal"]},
        "truncated": {"type": "string", "description": "Original fields cut to bound the entry."},
        "job_id": {"type": "string", "description": "The job, when it could be known."},
    },
    "patternProperties": {"^orig:": {"type": "string", "format": "binary"}},
    "required": ["entry_id", "deliveries", "reason", "error_code"],
    "additionalProperties": True,
}

_STATE = {
    "title": "JobStateHash",
    "description": (
        "The hash <prefix>:job:{<job_id>}:state: the fields of the job's latest status entry "
        "(see status_event.json); 'attempt' is the number of attempts started so far."
    ),
    "$ref": "status_event.json",
}


def schemas() -> dict[str, dict[str, Any]]:
    """File stem → JSON Schema, for every message."""
    out: dict[str, dict[str, Any]] = {
        "trace_request": TraceRequest.model_json_schema(),
        "status_event": StatusEvent.model_json_schema(),
        "progress_event": ProgressEvent.model_json_schema(),
        "chunk_event": ChunkEvent.model_json_schema(),
        "dead_letter": _DEAD_LETTER,
        "job_state": _STATE,
    }
    for stem, schema in out.items():
        schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
        schema.setdefault("$id", f"{stem}.json")
    return out


def render(schema: dict[str, Any]) -> str:
    """The file text of a schema (stable formatting)."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file (typed ones, and the wire forms under ``wire/``); returns their paths."""
    paths = []
    for folder, found in ((directory, schemas()), (directory / "wire", wire_schemas())):
        folder.mkdir(parents=True, exist_ok=True)
        for stem, schema in found.items():
            path = folder / f"{stem}.json"
            path.write_text(render(schema))
            paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(written)
