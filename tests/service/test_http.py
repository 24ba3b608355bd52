"""HTTP endpoints: liveness, readiness (Redis and Flight SQL), Prometheus metrics, AsyncAPI."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from prometheus_client import generate_latest
from redis.asyncio import Redis

from contracts import Keys, TraceRequest
from contracts.schema import WIRE_DIR
from tests.service.support import PID, JobReader, ScriptedGenerator, fast_settings, submit
from tests.support.devserver import small_lake, start_devserver
from tests.support.redis_server import RedisServer
from tests.support.wire import as_strings
from worker.errors import SourceUnavailable
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.service.health import MAX_LINE, PROBE_TIMEOUT_S
from worker.service.metrics import Metrics
from worker.sinks.blob.memory import MemoryBlobStore

KEYS = Keys("t")


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
async def service(redis_server: RedisServer) -> AsyncIterator[Service]:
    svc = Service(fast_settings(redis_server.url), generator=ScriptedGenerator(), store=MemoryBlobStore())
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def _port(svc: Service) -> int:
    assert svc.http is not None
    return svc.http.port


async def test_livez_and_readyz(redis_server: RedisServer, service: Service) -> None:
    port = _port(service)
    assert service.http is not None
    service.http.readiness.ttl_s = 0.0  # each probe's outcome at once (caching: the test below)
    assert (await _get(port, "/livez"))[0] == 200
    status, body = await _get(port, "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}
    gen = service.rt.generator
    assert isinstance(gen, ScriptedGenerator)
    gen.ping_error = SourceUnavailable("flight sql down")
    status, body = await _get(port, "/readyz")
    assert status == 503 and "flight sql down" in json.loads(body)["failures"]["flightsql"]
    gen.ping_error = None
    redis_server.stop()
    status, body = await _get(port, "/readyz")
    assert status == 503 and "redis" in json.loads(body)["failures"]
    assert (await _get(port, "/livez"))[0] == 200  # the process is alive; Redis is not its problem
    redis_server.start()
    assert (await _get(port, "/nope"))[0] == 404


async def test_readyz_is_cached_single_flight_and_bounded(service: Service) -> None:
    """Many pollers cost one Flight SQL probe; a stalled service answers 503 in bounded time and
    its stalled probe is not started again per poll (issue 21, item 8)."""
    assert service.http is not None
    port, readiness = _port(service), service.http.readiness
    gen = service.rt.generator
    assert isinstance(gen, ScriptedGenerator)
    pings = 0
    stall = asyncio.Event()

    async def ping() -> None:
        nonlocal pings
        pings += 1
        await stall.wait()

    answers = await asyncio.gather(*(_get(port, "/readyz") for _ in range(50)))
    assert {a[0] for a in answers} == {200} and readiness.runs == 1
    gen.ping = ping  # type: ignore[method-assign]
    readiness.ttl_s = 0.0
    async with asyncio.timeout(PROBE_TIMEOUT_S + 10):
        answers = await asyncio.gather(*(_get(port, "/readyz") for _ in range(20)))
    assert {a[0] for a in answers} == {503}
    assert pings == 1  # one stalled probe, shared by every poller
    stall.set()


async def test_asyncapi_is_built_once_and_long_lines_get_400(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    first = service.asyncapi_json()
    assert service.asyncapi_json() is first
    assert (await _get(_port(service), "/asyncapi.json"))[1] == first.encode()
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(service))
        try:
            writer.write(b"GET /" + b"a" * (MAX_LINE + 10) + b" HTTP/1.1\r\n\r\n")
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        assert raw.startswith(b"HTTP/1.1 400")
    assert not [r for r in caplog.records if r.exc_info or "Unhandled" in r.getMessage()]
    assert (await _get(_port(service), "/livez"))[0] == 200


async def test_metrics_count_jobs(redis_server: RedisServer, service: Service) -> None:
    redis = Redis.from_url(redis_server.url)
    try:
        reader = JobReader(redis, KEYS, "m1")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="m1"))
        await reader.terminal()
        await submit(redis, KEYS, {"bogus": "1"})
        dead = await redis.xread({KEYS.dead: "0-0"}, block=10_000)
        assert dead
    finally:
        await redis.aclose()
    status, body = await _get(_port(service), "/metrics")
    text = body.decode()
    assert status == 200
    assert 'trace_worker_jobs_total{state="succeeded"} 1.0' in text
    assert 'trace_worker_dead_letters_total{reason="invalid_request"} 1.0' in text
    assert "trace_worker_spans_total 30.0" in text
    for name in (
        "trace_worker_job_duration_seconds",
        "trace_worker_pending_entries",
        "trace_worker_lease_losses",
    ):
        assert name in text


async def test_asyncapi_document(service: Service) -> None:
    status, body = await _get(_port(service), "/asyncapi.json")
    doc = json.loads(body)
    assert status == 200 and doc["asyncapi"].startswith("3.")
    assert doc["info"]["title"] == "trace-worker"
    channels = json.dumps(doc["channels"])
    assert "t:requests" in channels and "t:workers" in channels
    assert "t:events" in channels and "t:dead" in channels and "t:job:" in channels
    messages = doc["components"]["messages"]
    assert "correlation_id" not in body.decode()  # no invented header
    request = messages["requests:SubscribeMessage"]["payload"]
    assert request["required"] == ["request"] and request["properties"]["request"]["contentSchema"]
    assert messages["dead letters:Message"]["payload"]["required"] == [
        "entry_id",
        "deliveries",
        "reason",
        "error_code",
    ]
    assert messages["job stream:Message"]["correlationId"]["location"] == "$message.payload#/request_id"
    assert len(messages["job stream:Message"]["payload"]["oneOf"]) == 4
    assert doc["channels"]["job stream"]["parameters"]["job_id"]
    assert doc["channels"]["job state"]["address"] == "t:job:{job_id}:state"
    assert doc["channels"]["cancels"]["address"] == "t:cancels"


async def test_asyncapi_status_stream_describes_real_entries(
    redis_server: RedisServer, service: Service
) -> None:
    """Every entry of a real ``:status`` stream (statuses, progress, a cancel answer) validates
    against the AsyncAPI payload of the job status stream channel, whose address has a parameter."""
    doc = json.loads((await _get(_port(service), "/asyncapi.json"))[1])
    channel = doc["channels"]["job status stream"]
    assert channel["address"] == "t:job:{job_id}:status" and channel["parameters"]["job_id"]
    payload = doc["components"]["messages"]["job status stream:Message"]["payload"]
    validator = Draft202012Validator(payload)
    redis = Redis.from_url(redis_server.url)
    try:
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="as1"))
        await JobReader(redis, KEYS, "as1").terminal()
        raw_id: Any = await redis.xadd(KEYS.cancels, {"job_id": "as1"})
        cancel_id = raw_id.decode()
        await JobReader(redis, KEYS, "as1").read_until(lambda e: getattr(e, "cancel_id", None) == cancel_id)
        entries: Any = await redis.xrange(KEYS.status_stream("as1"))
    finally:
        await redis.aclose()
    types = []
    for _entry_id, fields in entries:
        text = as_strings(fields)
        assert not [e.message for e in validator.iter_errors(text)], text
        types.append(text["type"])
    assert {"status", "progress", "cancel"} <= set(types)
    broken = as_strings(entries[0][1]) | {"attempt": "x"}
    assert not validator.is_valid(broken)  # the payload does check the fields


async def test_lost_group_fails_liveness(redis_server: RedisServer, service: Service) -> None:
    """FLUSHALL deletes the group: FastStream stops the subscriber; the worker reports it and exits."""
    redis = Redis.from_url(redis_server.url)
    try:
        await redis.flushall()
    finally:
        await redis.aclose()
    async with asyncio.timeout(60):
        await service.rt.fatal.wait()
    status, body = await _get(_port(service), "/livez")
    assert status == 503 and b"stopped consuming" in body


async def test_wire_schemas_are_served(service: Service) -> None:
    status, body = await _get(_port(service), "/schemas/")
    names = json.loads(body)["schemas"]
    assert status == 200 and "status_entry.json" in names and "request_entry.json" in names
    for name in names:
        status, body = await _get(_port(service), f"/schemas/{name}")
        assert status == 200 and body == (WIRE_DIR / name).read_bytes()
    status, _ = await _get(_port(service), "/schemas/../settings.json")
    assert status == 404


async def test_metrics_count_flightsql_calls(redis_server: RedisServer) -> None:
    """The DoGet count on /metrics is the server's own count of streams opened by the job."""
    with start_devserver(small_lake()) as server:
        settings = fast_settings(redis_server.url, flightsql_url=server.url)
        svc = Service(settings, generator=PipelineGenerator(settings), store=MemoryBlobStore())
        before = server.streams_opened  # readiness probes query the source too: counted on both sides
        await svc.start()
        redis = Redis.from_url(redis_server.url)
        try:
            reader = JobReader(redis, KEYS, "calls")
            pid = server.lake.processes[0].process_id
            await submit(redis, KEYS, TraceRequest(process_id=pid, job_id="calls"))
            assert (await reader.terminal()).state.value == "succeeded"
            status, body = await _get(_port(svc), "/metrics")
        finally:
            await redis.aclose()
            await svc.stop()
        opened = server.streams_opened - before
    text = body.decode()
    assert status == 200
    assert opened > 0
    assert f'trace_worker_flightsql_calls_total{{call="DoGet"}} {float(opened)}' in text
    assert 'trace_worker_flightsql_calls_total{call="GetFlightInfo"} 1.0' in text  # then tickets learnt


def test_flightsql_call_series_exist_before_the_first_call() -> None:
    """With direct tickets on, GetFlightInfo is never called: its series still reads 0."""
    metrics = Metrics()
    metrics.watch_source_calls(lambda: {"DoGet": 3})
    text = generate_latest(metrics.registry).decode()
    assert 'trace_worker_flightsql_calls_total{call="DoGet"} 3.0' in text
    assert 'trace_worker_flightsql_calls_total{call="GetFlightInfo"} 0.0' in text
    assert 'trace_worker_flightsql_calls_total{call="connect"} 0.0' in text
