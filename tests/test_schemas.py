"""The JSON Schema files in contracts/schemas/ match the models (regenerate: python -m contracts.schema)."""

from __future__ import annotations

import json

import pytest

from contracts import ChunkEvent, JobState, StatusEvent, TraceRequest
from contracts.schema import SCHEMA_DIR, WIRE_DIR, render, schemas
from contracts.wire_schema import wire_schemas
from tests.support.wire import validate_entry


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


def test_wire_schema_files_are_current() -> None:
    expected = wire_schemas()
    assert {p.stem for p in WIRE_DIR.glob("*.json")} == set(expected), "run: python -m contracts.schema"
    for stem, schema in expected.items():
        assert (WIRE_DIR / f"{stem}.json").read_text() == render(schema), f"wire/{stem}.json is stale"


def test_wire_schemas_take_entries_as_sent_and_refuse_typed_or_wrong_ones() -> None:
    status = StatusEvent(
        job_id="j", attempt=2, state=JobState.SUCCEEDED, size=10, sha256="ab", duration_s=1.5,
        request_id="1-0", labels={"a": "b"}, retryable=False,
    )  # fmt: skip
    validate_entry("status_entry", status.to_fields())
    validate_entry("job_stream_entry", status.to_fields())
    chunk = ChunkEvent(job_id="j", attempt=1, seq=0, offset=0, data=b"\n\xff\x00", last=True)
    validate_entry("job_stream_entry", chunk.to_fields())
    validate_entry("request_entry", {"request": TraceRequest(process_id=PID).to_json()})
    validate_entry("cancel_entry", {"job_id": "j", "request_id": "1-0"})
    for bad in (
        {**status.to_fields(), "attempt": "two"},
        {**status.to_fields(), "size": "10.0"},
        {**status.to_fields(), "retryable": "yes"},
        {**status.to_fields(), "surprise": "x"},
        {**chunk.to_fields(), "last": "1"},
    ):
        with pytest.raises(AssertionError):
            validate_entry("job_stream_entry", bad)


def test_trace_request_schema_has_the_workers_rules() -> None:
    request = json.loads((SCHEMA_DIR / "trace_request.json").read_text())
    labels = request["properties"]["labels"]
    assert labels["maxProperties"] == 16 and labels["propertyNames"]["pattern"]
    assert labels["additionalProperties"]["maxLength"] == 256
    assert "pattern" in request["properties"]["process_id"]
    assert request["properties"]["chunks"]["type"] == "boolean"


PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"
