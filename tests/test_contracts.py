"""The wire contract: exported names, request validation, event round trips."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

import contracts
from contracts import ChunkEvent, ErrorCode, JobState, Keys, StatusEvent, TraceRequest, parse_entry
from contracts.request import DEFAULT_OPEN_MAX_AGE_S
from contracts.vectors import VECTORS_FILE
from contracts.vectors import render as render_vectors

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


def test_exported_members() -> None:
    assert set(contracts.__all__) == {
        "DEFAULT_PREFIX",
        "TERMINAL_STATES",
        "ChunkEvent",
        "ErrorCode",
        "Event",
        "JobState",
        "Keys",
        "ProgressEvent",
        "SpanTypes",
        "StatusEvent",
        "TraceRequest",
        "parse_entry",
    }
    for name in contracts.__all__:
        assert hasattr(contracts, name)


def test_keys_share_a_cluster_hash_tag() -> None:
    k = Keys("p")
    tagged = [
        k.job("a.b"),
        k.state("a.b"),
        k.lock("a.b"),
        k.requesters("a.b"),
        k.detached("a.b"),
        k.cancelled("a.b"),
        k.chunk_ids("a.b"),
    ]
    assert all("{a.b}" in key for key in tagged)
    assert k.requests == "p:requests" and k.events == "p:events" and k.dead == "p:dead"
    assert k.cancels == "p:cancels"


def test_request_normalises_and_derives_stable_job_ids() -> None:
    a = TraceRequest(process_id=PID.upper(), begin="2026-01-01T10:00:00+01:00", end="2026-01-01T10:00:01Z")
    b = TraceRequest(process_id=PID, begin="2026-01-01T09:00:00Z", end="2026-01-01T10:00:01+00:00")
    assert a.process_id == PID
    assert a.effective_job_id() == b.effective_job_id()
    c = TraceRequest(process_id=PID, begin="2026-01-01T09:00:00Z", end="2026-01-01T10:00:02Z")
    assert c.effective_job_id() != a.effective_job_id()
    # labels describe the requester, not the trace: they do not change the job
    d = TraceRequest(process_id=PID, labels={"requested_by": "x"})
    assert d.effective_job_id() == TraceRequest(process_id=PID).effective_job_id()
    assert TraceRequest(process_id=PID, job_id="mine").effective_job_id() == "mine"


def test_request_round_trips_through_json() -> None:
    r = TraceRequest(process_id=PID, span_types="async", chunks=False, labels={"channel": "#perf"})
    assert TraceRequest.from_json(r.to_json()) == r


@pytest.mark.parametrize(
    "raw",
    [
        "{}",
        "not json",
        f'{{"process_id": "{PID}\'; DROP TABLE processes; --"}}',
        '{"process_id": "../../etc/passwd"}',
        f'{{"process_id": "{PID}", "begin": "2026-01-01T10:00:00"}}',
        f'{{"process_id": "{PID}", "begin": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}}',
        f'{{"process_id": "{PID}", "span_types": "all"}}',
        f'{{"process_id": "{PID}", "job_id": "a/b"}}',
        f'{{"process_id": "{PID}", "job_id": "{"x" * 129}"}}',
        f'{{"process_id": "{PID}", "v": 2}}',
        f'{{"process_id": "{PID}", "surprise": 1}}',
        f'{{"process_id": "{PID}", "labels": {{"k": "v\\u0000"}}}}',
        '{"process_id": "%s", "labels": {%s}}' % (PID, ", ".join(f'"k{i}": "v"' for i in range(17))),
    ],
)
def test_invalid_requests_are_rejected(raw: str) -> None:
    with pytest.raises(ValidationError):
        TraceRequest.from_json(raw)


def test_oversize_request_is_rejected_before_parsing() -> None:
    with pytest.raises(ValueError, match="larger than"):
        TraceRequest.from_json("x" * 20000)


def test_events_round_trip_with_bytes_fields() -> None:
    status = StatusEvent(
        job_id="j",
        attempt=2,
        state=JobState.FAILED,
        error_code=ErrorCode.SOURCE_UNAVAILABLE,
        message="down",
        retryable=True,
        labels={"a": "b"},
    )
    wire = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in status.to_fields().items()}
    assert parse_entry(wire) == status
    chunk = ChunkEvent(job_id="j", attempt=1, seq=3, offset=10, data=bytes(range(256)), last=False)
    assert parse_entry(chunk.to_fields()) == chunk
    with pytest.raises(ValueError):
        parse_entry({"type": "bogus", "job_id": "j"})


def test_retryable_split() -> None:
    assert ErrorCode.SOURCE_UNAVAILABLE.retryable
    assert not ErrorCode.PROCESS_NOT_FOUND.retryable
    assert JobState.DEAD.terminal and not JobState.RUNNING.terminal


def test_request_times_in_exact_epoch_nanoseconds() -> None:
    r = TraceRequest(process_id=PID, begin="2026-01-01T00:59:59.999999+01:00", end="2026-01-01T00:00:00Z")
    assert r.begin_ns == 1_767_225_599_999_999_000
    assert r.end_ns == 1_767_225_600_000_000_000
    assert TraceRequest(process_id=PID).begin_ns is None


def test_job_id_vectors_file_is_current_and_every_vector_holds() -> None:
    """contracts/job_id_vectors.json: what clients in other languages check themselves against."""
    assert VECTORS_FILE.read_text() == render_vectors(), "run: python -m contracts.vectors"
    data = json.loads(VECTORS_FILE.read_text())
    assert len(data["vectors"]) >= 10
    for vector in data["vectors"]:
        request = TraceRequest.model_validate_json(vector["request"])
        canonical = vector["canonical"].encode()
        assert request.canonical() == canonical
        assert hashlib.sha256(canonical).hexdigest() == vector["fingerprint"] == request.fingerprint()
        assert request.effective_job_id() == vector["job_id"]
        if request.job_id is None:
            assert vector["job_id"] == "t-" + vector["fingerprint"][:32]
    for spelling in data["rejected_times"]:  # not RFC 3339: refused, with a message saying the form
        with pytest.raises(ValidationError, match="RFC 3339"):
            TraceRequest.from_json(json.dumps({"process_id": PID, "begin": spelling}))
    with pytest.raises(ValidationError, match="RFC 3339 strings"):
        TraceRequest.from_json(json.dumps({"process_id": PID, "end": 1700000000}))


def test_derived_ids_cannot_be_claimed_by_other_requests() -> None:
    mine = TraceRequest(process_id=PID)
    assert (
        TraceRequest(process_id=PID, job_id=mine.effective_job_id()).effective_job_id()
        == mine.effective_job_id()
    )
    with pytest.raises(ValidationError, match="derived"):
        TraceRequest(process_id=PID, span_types="thread", job_id=mine.effective_job_id())


def test_request_booleans_and_max_age_are_strict() -> None:
    with pytest.raises(ValidationError):
        TraceRequest.model_validate_json(f'{{"process_id": "{PID}", "chunks": "yes"}}')
    with pytest.raises(ValidationError):
        TraceRequest.model_validate_json(f'{{"process_id": "{PID}", "max_age_s": "5"}}')
    with pytest.raises(ValidationError):
        TraceRequest.model_validate_json(f'{{"process_id": "{PID}", "max_age_s": -1}}')
    assert TraceRequest(process_id=PID).effective_max_age_s == DEFAULT_OPEN_MAX_AGE_S
    closed = TraceRequest(process_id=PID, begin="2026-01-01T09:00:00Z", end="2026-01-01T10:00:00Z")
    assert closed.effective_max_age_s is None
    assert closed.model_copy(update={"max_age_s": 5}).effective_max_age_s == 5


def test_readers_ignore_fields_they_do_not_know() -> None:
    """A newer contract may add fields (and the state hash has its own): old readers go on."""
    fields = {**StatusEvent(job_id="j", state=JobState.RUNNING).to_fields(), "started_ms": "1", "novel": "x"}
    event = parse_entry(fields)
    assert isinstance(event, StatusEvent) and event.state == JobState.RUNNING
