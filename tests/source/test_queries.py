"""SQL text building: ids validated and spelled canonically, literals quoted in one place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import InvalidRequest
from worker.model import TimeRange
from worker.source import queries

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"
SID = "0b7a6f1e-95c4-4d7e-9f39-3c3c7f6c2a10"

INJECTIONS = [
    "34d7c06d-3163-4111-863e-c5fc09d22d51' OR '1'='1",
    "'); DROP TABLE blocks; --",
    "34d7c06d-3163-4111-863e-c5fc09d2'--1",
    "{34d7c06d-3163-4111-863e-c5fc09d22d51}",
    "urn:uuid:34d7c06d-3163-4111-863e-c5fc09d22d51",
    "34d7c06d316341118 63ec5fc09d22d51xxxx",
    "34d7c06d31634111863ec5fc09d22d51",
    "34d7c06d-3163-4111-863e-c5fc09d22d5\u0131",
    "",
    "global",
]


def test_canonical_uuid_lowercases() -> None:
    assert queries.canonical_uuid(PID.upper()) == PID


@pytest.mark.parametrize("bad", INJECTIONS)
def test_non_uuid_ids_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        queries.canonical_uuid(bad, "process_id")
    with pytest.raises(InvalidRequest):
        queries.process_sql(bad)
    with pytest.raises(InvalidRequest):
        queries.thread_spans_sql(bad, TimeRange(0, 1))
    with pytest.raises(InvalidRequest):
        queries.async_events_sql(bad, TimeRange(0, 1))


def test_non_strings_are_rejected() -> None:
    with pytest.raises(InvalidRequest):
        queries.canonical_uuid(12345)


@given(st.text(max_size=60))
def test_only_uuids_pass(text: str) -> None:
    try:
        out = queries.canonical_uuid(text)
    except InvalidRequest:
        return
    assert out == text.lower()
    assert set(out) <= set("0123456789abcdef-")


def test_sql_string_doubles_quotes() -> None:
    assert queries.sql_string("it's") == "'it''s'"


def test_rfc3339_has_nanoseconds() -> None:
    assert queries.rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert queries.rfc3339(0) == "1970-01-01T00:00:00.000000000Z"


def test_header_time_rounds_outwards() -> None:
    ns = 1_700_000_000_123_456_789
    assert queries.header_time(ns, round_up=False) == "2023-11-14T22:13:20.123456Z"
    assert queries.header_time(ns, round_up=True) == "2023-11-14T22:13:20.123457Z"
    exact = 1_700_000_000_123_456_000
    assert queries.header_time(exact, round_up=True) == "2023-11-14T22:13:20.123456Z"


def test_thread_spans_sql() -> None:
    sql = queries.thread_spans_sql(SID.upper(), TimeRange(1_000_000_001, 2_000_000_000))
    assert f"view_instance('thread_spans', '{SID}')" in sql
    assert "\"begin\" <= TIMESTAMP '1970-01-01T00:00:02.000000000Z'" in sql
    assert "\"end\" >= TIMESTAMP '1970-01-01T00:00:01.000000001Z'" in sql
    assert sql.endswith('ORDER BY "begin"')
    for column in queries.THREAD_SPAN_COLUMNS:
        assert f'"{column}"' in sql


def test_async_events_sql_has_no_hash() -> None:
    sql = queries.async_events_sql(PID, TimeRange(0, 5))
    assert f"view_instance('async_events', '{PID}')" in sql
    assert "hash" not in sql
    assert sql.endswith('ORDER BY "time"')


def test_process_and_threads_sql() -> None:
    assert f"process_id = '{PID}'" in queries.process_sql(PID)
    threads = queries.threads_sql(PID)
    assert "array_has(\"streams.tags\", 'cpu')" in threads
    assert threads.endswith("ORDER BY stream_id")


@pytest.mark.parametrize("limit", [0, -1, 100_001, True, "5"])
def test_processes_limit_is_checked(limit: object) -> None:
    with pytest.raises(InvalidRequest):
        queries.processes_sql(limit)  # type: ignore[arg-type]


def test_processes_sql() -> None:
    assert queries.processes_sql(7).endswith("LIMIT 7")
