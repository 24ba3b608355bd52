"""The wire contract: exported names, request validation, event round trips."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import contracts
from contracts import ChunkEvent, ErrorCode, JobState, Keys, StatusEvent, TraceRequest, parse_entry

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
    tagged = [k.job("a.b"), k.state("a.b"), k.cancel("a.b"), k.lock("a.b")]
    assert all("{a.b}" in key for key in tagged)
    assert k.requests == "p:requests" and k.events == "p:events" and k.dead == "p:dead"


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
