"""The gateway's HTTP API against the real stack: a worker, redis-server and the devserver."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyarrow.compute as pc
from redis import Redis

from tests.engine.decode_logs import decode_logs
from tests.gateway.conftest import Stack
from tests.support.devserver import expected_async_events
from tests.support.gateway_process import run_gateway
from tests.support.redis_server import free_port
from worker.inspect import inspect_trace


def _sse(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) of each Server-Sent Event frame."""
    kind, data = "message", ""
    for line in response.iter_lines():
        if line == "":
            if data:
                yield kind, json.loads(data)
            kind, data = "message", ""
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


JSON = {"content-type": "application/json"}


def _chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    """A request body httpx sends with chunked transfer encoding (no Content-Length)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    assert body["message"]
    message: str = body["message"]
    return message


def test_processes_newest_first_with_search_and_paging(stack: Stack) -> None:
    lake = stack.lake.processes
    newest_first = [p.process_id for p in sorted(lake, key=lambda p: p.begin_ns, reverse=True)]
    page = stack.http.get("/api/processes").json()
    assert [p["process_id"] for p in page["items"]] == newest_first
    assert page["has_more"] is False
    assert {p["exe"] for p in page["items"]} == {p.exe for p in lake}

    small = lake[0]
    by_exe = stack.http.get("/api/processes", params={"search": small.exe.upper()[-6:]}).json()["items"]
    assert small.process_id in [p["process_id"] for p in by_exe]
    assert all(small.exe.upper()[-6:].lower() in p["exe"].lower() for p in by_exe)
    by_id = stack.http.get("/api/processes", params={"search": small.process_id[:13]}).json()["items"]
    assert [p["process_id"] for p in by_id] == [small.process_id]
    assert stack.http.get("/api/processes", params={"search": "50%_'; DROP"}).json()["items"] == []

    first = stack.http.get("/api/processes", params={"limit": 1}).json()
    second = stack.http.get("/api/processes", params={"limit": 1, "offset": 1}).json()
    assert (
        first["has_more"]
        and [first["items"][0]["process_id"], second["items"][0]["process_id"]] == newest_first[:2]
    )


def test_process_statistics_are_the_lake_counts(stack: Stack) -> None:
    small = stack.lake.processes[0]
    stats = stack.http.get(f"/api/processes/{small.process_id.upper()}").json()
    assert stats["process"]["process_id"] == small.process_id
    assert stats["threads"] == len(small.thread_streams) == len(stats["thread_list"])
    assert stats["thread_spans"] == small.thread_span_count
    # Async spans that begin within the recorded range (a few of the lake's begin after its last
    # block ends): what a trace of the whole process reads.
    begins = sum(
        pc.sum(pc.equal(batch.column("event_type"), "begin")).as_py() or 0
        for batch in expected_async_events(stack.lake, small.process_id, small.begin_ns, small.end_ns)
    )
    assert 0 < stats["async_spans"] == begins <= small.async_span_count
    assert stats["log_entries"] == small.log_entry_count
    assert stats["duration_s"] > 0 and stats["begin"] < stats["end"]


def test_log_entries_newest_first_filtered(stack: Stack) -> None:
    pid = stack.lake.processes[0].process_id
    logs = stack.http.get(f"/api/processes/{pid}/logs", params={"limit": 40}).json()["items"]
    assert len(logs) == 40
    times = [entry["time"] for entry in logs]
    assert times == sorted(times, reverse=True)
    warn = stack.http.get(f"/api/processes/{pid}/logs", params={"level": "warn", "limit": 200}).json()[
        "items"
    ]
    assert warn and all(entry["level"] <= 3 for entry in warn)
    word = logs[0]["msg"].split()[0]
    found = stack.http.get(f"/api/processes/{pid}/logs", params={"search": word, "limit": 50}).json()["items"]
    assert found and all(word.lower() in entry["msg"].lower() for entry in found)
    # Times are shown to the microsecond (truncated): the window's end is one microsecond later.
    newest = datetime.fromisoformat(logs[0]["time"]) + timedelta(microseconds=1)
    window = stack.http.get(
        f"/api/processes/{pid}/logs",
        params={"begin": logs[-1]["time"], "end": newest.isoformat(), "limit": 1000},
    ).json()["items"]
    assert len(window) >= 40 and all(logs[-1]["time"] <= e["time"] <= logs[0]["time"] for e in window)
    assert [e["time"] for e in window[:40]] == times


def test_log_entries_of_a_quiet_range_are_an_empty_list(stack: Stack) -> None:
    process = stack.lake.processes[0]
    start = datetime.fromtimestamp(process.begin_ns / 1e9, tz=UTC)
    quiet = {
        "begin": (start - timedelta(hours=2)).isoformat(),
        "end": (start - timedelta(hours=1)).isoformat(),
    }
    answer = stack.http.get(f"/api/processes/{process.process_id}/logs", params=quiet)
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


def test_bad_input_gets_4xx_with_a_clear_message(stack: Stack) -> None:
    http = stack.http
    assert "UUID" in _error(http.get("/api/processes/not-a-uuid"), 400, "invalid_request")
    unknown = "00000000-0000-4000-8000-000000000000"
    assert unknown in _error(http.get(f"/api/processes/{unknown}"), 404, "process_not_found")
    pid = stack.lake.processes[0].process_id
    assert "level" in _error(
        http.get(f"/api/processes/{pid}/logs", params={"level": "loud"}), 400, "invalid_request"
    )
    assert "offset" in _error(
        http.get(f"/api/processes/{pid}/logs", params={"begin": "2026-01-01T00:00:00"}),
        400,
        "invalid_request",
    )
    for early in ("0001-01-01T00:00:00+14:00", "0500-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):
        assert "between 1970" in _error(
            http.get(f"/api/processes/{pid}/logs", params={"begin": early}), 400, "invalid_request"
        )
    assert "limit" in _error(http.get("/api/processes", params={"limit": 0}), 422, "invalid_request")
    assert "process_id" in _error(
        http.post("/api/traces", json={"process_id": "nope"}), 422, "invalid_request"
    )
    assert "begin must be before end" in _error(
        http.post(
            "/api/traces",
            json={"process_id": pid, "begin": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        ),
        422,
        "invalid_request",
    )
    assert "span_types" in _error(
        http.post("/api/traces", json={"process_id": pid, "span_types": "x"}), 422, "invalid_request"
    )
    huge = {"process_id": pid, "labels": {"k": "v" * 200_000}}
    assert "limited to" in _error(http.post("/api/traces", json=huge), 413, "request_too_large")
    # without Content-Length (chunked transfer encoding): refused while it is read, 413 all the same
    chunked = http.post("/api/traces", content=_chunks(json.dumps(huge).encode()), headers=JSON)
    assert "transfer-encoding" in chunked.request.headers and "content-length" not in chunked.request.headers
    assert "limited to" in _error(chunked, 413, "request_too_large")
    assert _error(http.get("/api/traces/no-such-job"), 404, "job_not_found")
    assert "job id" in _error(http.get("/api/traces/bad%20id!"), 404, "job_not_found")
    assert _error(http.get("/api/traces/no-such-job/events"), 404, "job_not_found")
    assert _error(http.delete("/api/traces/no-such-job"), 404, "job_not_found")
    assert _error(http.get("/api/nothing-here"), 404, "not_found")


def test_trace_job_end_to_end(stack: Stack) -> None:
    http = stack.http
    typical = stack.lake.processes[1]
    accepted = http.post(
        "/api/traces", json={"process_id": typical.process_id, "labels": {"requested_by": "test"}}
    )
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    job_id = job["job_id"]
    assert accepted.headers["location"] == job["links"]["self"] == f"/api/traces/{job_id}"

    kinds: list[str] = []
    with http.stream("GET", job["links"]["events"]) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for kind, data in _sse(events):
            kinds.append(kind if kind == "progress" else f"{kind}:{data['state']}")
            last = data
    assert kinds[-1] == "status:succeeded", kinds
    assert "progress" in kinds[: kinds.index("status:succeeded")]
    assert kinds.index("status:running") < kinds.index("progress")

    status = http.get(f"/api/traces/{job_id}").json()
    assert status["state"] == "succeeded" and status["sha256"] == last["sha256"]
    assert status["labels"] == {"requested_by": "test"}

    trace = http.get(f"/api/traces/{job_id}/trace")
    assert trace.status_code == 200
    assert hashlib.sha256(trace.content).hexdigest() == status["sha256"]
    assert int(trace.headers["content-length"]) == len(trace.content) == status["size"]
    assert trace.headers["etag"] == f'"{status["sha256"]}"'
    assert f'filename="{job_id}.pftrace"' in trace.headers["content-disposition"]
    etag = trace.headers["etag"]
    for none_match in (etag, f"W/{etag}", f'"other", W/{etag}', "*"):
        cached = http.get(f"/api/traces/{job_id}/trace", headers={"If-None-Match": none_match})
        assert (cached.status_code, cached.headers["etag"], cached.content) == (304, etag, b""), none_match
    assert http.get(f"/api/traces/{job_id}/trace", headers={"If-None-Match": 'W/"other"'}).status_code == 200

    recent = http.get("/api/traces").json()["items"]
    assert job_id in [j["job_id"] for j in recent]
    assert _error(http.delete(f"/api/traces/{job_id}"), 409, "job_finished")


def test_downloaded_trace_decodes(stack: Stack, tmp_path: Any) -> None:
    small = stack.lake.processes[0]
    job = stack.http.post("/api/traces", json={"process_id": small.process_id, "span_types": "thread"}).json()
    with stack.http.stream("GET", job["links"]["events"]) as events:
        states = [data["state"] for kind, data in _sse(events) if kind == "status"]
    assert states[-1] == "succeeded"
    path = tmp_path / "small.pftrace"
    path.write_bytes(stack.http.get(job["links"]["trace"]).content)
    report = inspect_trace(path)
    assert report.ok, report
    assert report.slices == small.thread_span_count  # every thread span of the lake, as the stats said


def test_logs_and_metrics_reach_the_trace(stack: Stack) -> None:
    small = stack.lake.processes[0]
    body = {"process_id": small.process_id, "span_types": "async", "logs": True, "metrics": True}
    job = stack.http.post("/api/traces", json=body).json()
    assert job["request"]["logs"] is True and job["request"]["metrics"] is True
    with stack.http.stream("GET", job["links"]["events"]) as events:
        states = [data["state"] for kind, data in _sse(events) if kind == "status"]
    assert states[-1] == "succeeded"
    got = decode_logs(stack.http.get(job["links"]["trace"]).content)
    assert got.problems == []
    assert len(got.logs) == small.log_entry_count > 0
    assert sum(len(v) for v in got.counters.values()) == small.measure_count > 0


def test_cancel_a_running_job(stack: Stack) -> None:
    large = stack.lake.processes[2]
    job = stack.http.post("/api/traces", json={"process_id": large.process_id, "span_types": "thread"}).json()
    job_id = job["job_id"]
    before = stack.http.get(f"/api/traces/{job_id}/trace")
    assert before.status_code == 409 and before.json()["error"]["code"] == "job_not_finished"
    cancelled = False
    with stack.http.stream("GET", job["links"]["events"]) as events:
        for kind, data in _sse(events):
            if kind == "progress" and not cancelled:
                answer = stack.http.delete(f"/api/traces/{job_id}")
                assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
                cancelled = True
            last = (kind, data)
    assert cancelled and last[0] == "status" and last[1]["state"] == "cancelled"
    assert _error(stack.http.get(f"/api/traces/{job_id}/trace"), 409, "cancelled")


def test_cancel_of_a_shared_job_detaches_the_gateway_request(stack: Stack) -> None:
    """Another client wants the job too: DELETE detaches only the gateway's request (outcome
    ``detached``), and every route then reports the job's own end: succeeded, with its trace."""
    large = stack.lake.processes[2]
    body = {"process_id": large.process_id, "span_types": "thread", "job_id": "gw-shared"}
    stream = "t:job:{gw-shared}"
    redis = Redis.from_url(stack.redis.url)
    try:
        other: Any = redis.xadd("t:requests", {"request": json.dumps(body | {"labels": {"who": "other"}})})
        _wait_status(redis, stream, lambda f: f.get(b"request_id") == other and f[b"state"] == b"running")
        accepted = stack.http.post("/api/traces", json=body)
        assert accepted.status_code == 202, accepted.text
        _wait_status(redis, stream, lambda f: b"joined" in f.get(b"detail", b""))
        answer = stack.http.delete("/api/traces/gw-shared")
        assert answer.status_code == 202 and answer.json()["outcome"] == "detached", answer.text
        with stack.http.stream("GET", "/api/traces/gw-shared/events") as events:
            states = [data["state"] for kind, data in _sse(events) if kind == "status"]
        assert states[-1] == "succeeded", states
        status = stack.http.get("/api/traces/gw-shared").json()
        assert status["state"] == "succeeded"
        trace = stack.http.get("/api/traces/gw-shared/trace")
        assert trace.status_code == 200, trace.text
        assert hashlib.sha256(trace.content).hexdigest() == status["sha256"]
    finally:
        redis.close()


def _wait_status(redis: Redis, stream: str, pred: Any, within: float = 120.0) -> None:
    """XREAD BLOCK the job stream from its start until a status entry matches ``pred`` (raw fields)."""
    last, deadline = "0-0", time.monotonic() + within
    while time.monotonic() < deadline:
        reply: Any = redis.xread({stream: last}, block=1000, count=100)
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                if fields.get(b"type") == b"status" and pred(fields):
                    return
    raise AssertionError(f"no matching status on {stream} within {within}s")


def _frames(response: httpx.Response) -> list[dict[str, str]]:
    """Every SSE frame as its raw fields (id, event, data), comments and retry left out."""
    frames: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if current:
                frames.append(current)
            current = {}
        elif not line.startswith((":", "retry:")):
            name, _, value = line.partition(":")
            current[name] = value.strip()
    return frames


def test_sse_ends_so_that_eventsource_does_not_replay(stack: Stack) -> None:
    """After the terminal event a frame ``id: end`` (no data); an EventSource reconnecting with
    that Last-Event-ID gets 204, which stops it (no replay for ever)."""
    small = stack.lake.processes[0]
    job = stack.http.post("/api/traces", json={"process_id": small.process_id, "span_types": "async"}).json()
    with stack.http.stream("GET", job["links"]["events"]) as events:
        frames = _frames(events)
    assert frames[-1] == {"id": "end"} and json.loads(frames[-2]["data"])["state"] == "succeeded"
    assert not any("id" in f for f in frames[:-1])
    done = stack.http.get(job["links"]["events"], headers={"Last-Event-ID": "end"})
    assert done.status_code == 204 and done.content == b""


def test_synthetic_queued_event_carries_the_labels(stack: Stack) -> None:
    env = {**stack.env, "TRACE_WORKER_KEY_PREFIX": "no-worker-q"}  # nothing consumes: stays queued
    with run_gateway(env) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
        body = {"process_id": stack.lake.processes[0].process_id, "labels": {"who": "sse"}}
        job = http.post("/api/traces", json=body).json()
        with http.stream("GET", job["links"]["events"]) as events:
            kind, data = next(_sse(events))
        assert (kind, data["state"], data["labels"]) == ("status", "queued", {"who": "sse"})


def test_operations_endpoints(stack: Stack) -> None:
    http = stack.http
    assert http.get("/livez").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    openapi = http.get("/openapi.json").json()
    for path in (
        "/api/processes",
        "/api/processes/{process_id}",
        "/api/processes/{process_id}/logs",
        "/api/traces",
        "/api/traces/{job_id}",
        "/api/traces/{job_id}/events",
        "/api/traces/{job_id}/trace",
    ):
        assert path in openapi["paths"], path
    assert "delete" in openapi["paths"]["/api/traces/{job_id}"]
    assert http.get("/docs").status_code == 200
    metrics = http.get("/metrics").text
    assert 'trace_gateway_http_requests_total{method="GET",route="/livez",status="200"}' in metrics
    page = http.get("/")
    assert page.status_code == 200 and 'id="process-table"' in page.text
    assert http.get("/static/app.js").status_code == 200


def test_token_cors_stream_limit_and_readiness(stack: Stack) -> None:
    origin = "https://dashboard.example"
    env = {
        **stack.env,
        "TRACE_WORKER_KEY_PREFIX": "no-worker",  # jobs stay submitted: nothing consumes this prefix
        "TRACE_WORKER_GATEWAY_TOKEN": "s3cret",
        "TRACE_WORKER_GATEWAY_CORS_ORIGINS": f"{origin}, https://other.example",
        "TRACE_WORKER_GATEWAY_MAX_STREAMS": "1",
    }
    with run_gateway(env) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
        assert "Bearer" in _error(http.get("/api/processes"), 401, "unauthorized")
        # the token is checked before the body is read: not parsed, validated or even size-checked
        for body in (b"{not json", b'{"process_id": "nope"}', b"x" * 200_000):
            refused = http.post("/api/traces", content=body, headers=JSON)
            assert _error(refused, 401, "unauthorized") and refused.headers["www-authenticate"] == "Bearer"
        refused = http.post("/api/traces", content=_chunks(b"x" * 200_000), headers=JSON)
        assert _error(refused, 401, "unauthorized")
        assert _error(
            http.get("/api/processes", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized"
        )
        auth = {"Authorization": "Bearer s3cret"}
        assert http.get("/api/processes", headers=auth).status_code == 200
        assert http.get("/livez").status_code == 200  # probes need no token
        assert http.get("/ui-config.json").json()["auth"] is True

        preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        allowed = http.options("/api/traces", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == origin
        other = http.options("/api/traces", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") is None
        assert "https://evil.example" in _error(other, 400, "cors_refused")  # JSON like every error

        pid = stack.lake.processes[0].process_id
        job = http.post("/api/traces", json={"process_id": pid, "job_id": "held"}, headers=auth).json()
        assert job["state"] in ("submitted", "queued")  # no worker consumes this prefix
        assert http.get("/api/traces/held", headers=auth).json()["state"] == "queued"
        with http.stream("GET", "/api/traces/held/events", headers=auth) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            assert next(lines) == "retry: 3000"  # the stream is open and counted
            # nothing is on the job's stream while its request waits: the stream says so at once
            assert [next(lines), next(lines)] == ["", "event: status"]
            first_status = json.loads(next(lines).removeprefix("data:"))
            assert (first_status["job_id"], first_status["state"]) == ("held", "queued")
            second = http.get("/api/traces/held/events", headers=auth)
            assert "limit 1" in _error(second, 429, "too_many_streams")
            assert second.headers["retry-after"] == "2"

    dead_flight = {**stack.env, "TRACE_WORKER_FLIGHTSQL_URL": f"grpc://127.0.0.1:{free_port()}"}
    with run_gateway(dead_flight) as gw, httpx.Client(base_url=gw.url, timeout=60) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 503 and set(ready.json()["failures"]) == {"flightsql"}
        assert _error(http.get("/api/processes"), 503, "source_unavailable")
