"""The JSON Schema files in contracts/schemas/ match the models (regenerate: python -m contracts.schema)."""

from __future__ import annotations

import json

from contracts import ChunkEvent, JobState, StatusEvent, TraceRequest
from contracts.schema import SCHEMA_DIR, render, schemas


def test_schema_files_are_current() -> None:
    expected = schemas()
    on_disk = {p.stem for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(expected), "run: python -m contracts.schema"
    for stem, schema in expected.items():
        assert (SCHEMA_DIR / f"{stem}.json").read_text() == render(schema), f"{stem}.json is stale"


def test_schemas_describe_the_wire_fields() -> None:
    request = json.loads((SCHEMA_DIR / "trace_request.json").read_text())
    assert set(request["properties"]) == set(TraceRequest.model_fields)
    assert request["required"] == ["process_id"]
    status = json.loads((SCHEMA_DIR / "status_event.json").read_text())
    assert set(status["properties"]) == set(StatusEvent.model_fields)
    assert {s.value for s in JobState} <= set(json.dumps(status).replace('"', " ").split())
    chunk = json.loads((SCHEMA_DIR / "chunk_event.json").read_text())
    assert set(chunk["properties"]) == set(ChunkEvent.model_fields)
    assert chunk["properties"]["data"]["format"] == "binary"
