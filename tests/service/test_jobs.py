"""The service's job handling against a real redis-server, with a scripted generator and the
in-memory blob store (end-to-end with the devserver and real blob stores: test_end_to_end.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, Keys, StatusEvent, TraceRequest
from contracts.events import ProgressEvent
from tests.service.support import PID, JobReader, ScriptedGenerator, fast_settings, submit, wait_until
from tests.support.redis_server import RedisServer
from worker.errors import ProcessNotFound, SourceUnavailable
from worker.service.app import Service, ensure_group
from worker.sinks.blob.memory import MemoryBlobStore

KEYS = Keys("t")


class Harness:
    def __init__(self, url: str, generator: ScriptedGenerator, **overrides: Any) -> None:
        self.generator = generator
        self.store = MemoryBlobStore()
        self.service = Service(fast_settings(url, **overrides), generator=generator, store=self.store)

    async def __aenter__(self) -> Harness:
        await self.service.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service.stop()


async def test_whole_job_chunks_equal_blob(redis_server: RedisServer, redis: Redis) -> None:
    gen = ScriptedGenerator(chunks=4)
    # Sent before any worker exists: the group is created at 0, so it is still delivered.
    req = TraceRequest(process_id=PID, labels={"requested_by": "test"})
    entry = await submit(redis, KEYS, req)
    async with Harness(redis_server.url, gen) as h:
        reader = JobReader(redis, KEYS, req.effective_job_id())
        final = await reader.terminal()
        assert final.state == JobState.SUCCEEDED, final
        assert final.attempt == 1 and final.labels == {"requested_by": "test"}
        data = reader.trace_bytes(final.attempt)
        assert data == gen.expected(req)
        blob = h.store.objects[f"{PID}/{req.effective_job_id()}.pftrace"]
        assert blob == data
        assert final.sha256 == hashlib.sha256(data).hexdigest() and final.size == len(data)
        assert final.chunks == 4 and final.spans == 40
        assert final.uri == f"memory:///{PID}/{req.effective_job_id()}.pftrace"
        statuses = [s.state for s in reader.statuses()]
        assert statuses == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
        # every answer names the request entry it answers
        assert {s.request_id for s in reader.statuses()} == {entry}
        assert final.start_id is not None and final.start_id == _running_entry_id(reader)
        assert any(isinstance(e, ProgressEvent) for e in reader.events)
        state: Any = await redis.hgetall(KEYS.state(req.effective_job_id()))
        assert state[b"state"] == b"succeeded" and state[b"sha256"] == final.sha256.encode()
        # the job's keys expire, the entry is acknowledged, the lock is gone, events got both transitions
        assert 0 < await redis.ttl(KEYS.job(req.effective_job_id())) <= 24 * 3600
        assert 0 < await redis.ttl(KEYS.state(req.effective_job_id())) <= 24 * 3600
        assert not await redis.exists(KEYS.lock(req.effective_job_id()))
        pending: Any = await redis.xpending(KEYS.requests, KEYS.group)
        assert pending["pending"] == 0
        events: Any = await redis.xrange(KEYS.events)
        assert [e[1][b"state"] for e in events] == [b"queued", b"running", b"succeeded"]
        assert h.store.open_writers == 0


async def test_blob_only_job_publishes_no_chunks(redis_server: RedisServer, redis: Redis) -> None:
    gen = ScriptedGenerator(chunks=2)
    req = TraceRequest(process_id=PID, chunks=False)
    async with Harness(redis_server.url, gen) as h:
        await submit(redis, KEYS, req)
        reader = JobReader(redis, KEYS, req.effective_job_id())
        final = await reader.terminal()
        assert final.state == JobState.SUCCEEDED
        assert reader.trace_bytes(1) == b""
        assert h.store.objects[f"{PID}/{req.effective_job_id()}.pftrace"] == gen.expected(req)


async def test_duplicates_start_no_work_and_failed_jobs_can_be_resubmitted(
    redis_server: RedisServer, redis: Redis
) -> None:
    gen = ScriptedGenerator(chunks=2, gate=asyncio.Event())
    req = TraceRequest(process_id=PID, job_id="dup-1")
    async with Harness(redis_server.url, gen):
        reader = JobReader(redis, KEYS, "dup-1")
        await submit(redis, KEYS, req)
        await reader.read_until(lambda e: e.type == "chunk")
        await submit(redis, KEYS, req)  # while running
        dup = await reader.read_until(
            lambda e: isinstance(e, StatusEvent) and "duplicate" in (e.detail or "")
        )
        assert (
            isinstance(dup, StatusEvent)
            and dup.state == JobState.RUNNING
            and "duplicate" in (dup.detail or "")
        )
        assert gen.gate is not None
        gen.gate.set()
        assert (await reader.terminal()).state == JobState.SUCCEEDED
        await submit(redis, KEYS, req)  # after success
        dup2 = await reader.read_until(
            lambda e: isinstance(e, StatusEvent) and e.state == JobState.SUCCEEDED and e.detail is not None
        )
        first = next(s for s in reader.statuses() if s.state == JobState.SUCCEEDED)
        assert isinstance(dup2, StatusEvent) and dup2.request_id != first.request_id
        # a duplicate's answer carries every field of the job's outcome
        for name in ("uri", "size", "sha256", "spans", "chunks", "duration_s", "start_id", "attempt"):
            assert getattr(dup2, name) == getattr(first, name), name
        assert isinstance(dup2, StatusEvent) and dup2.sha256 is not None
        assert gen.calls == 1
        await wait_until(lambda: _pending_is(redis, 0), what="all entries acknowledged")

        # a failed job can be resubmitted; its attempt numbers continue
        gen.fail_first.append(ProcessNotFound("no such process"))
        req2 = TraceRequest(process_id=PID, job_id="dup-2")
        reader2 = JobReader(redis, KEYS, "dup-2")
        await submit(redis, KEYS, req2)
        failed = await reader2.terminal()
        assert failed.state == JobState.FAILED and failed.error_code == ErrorCode.PROCESS_NOT_FOUND
        assert failed.retryable is False and failed.attempt == 1
        await submit(redis, KEYS, req2)
        ok = await reader2.read_until(lambda e: isinstance(e, StatusEvent) and e.state == JobState.SUCCEEDED)
        assert ok.attempt == 2


def _running_entry_id(reader: JobReader) -> str:
    return next(
        i for i, e in zip(reader.ids, reader.events, strict=True) if getattr(e, "state", None) == "running"
    )


async def _pending_is(redis: Redis, n: int) -> bool:
    summary: Any = await redis.xpending(KEYS.requests, KEYS.group)
    return int(summary["pending"]) == n


async def test_transient_errors_retry_as_new_attempts_then_fail(
    redis_server: RedisServer, redis: Redis
) -> None:
    gen = ScriptedGenerator(chunks=2, fail_first=[SourceUnavailable("down"), SourceUnavailable("still down")])
    async with Harness(redis_server.url, gen, retry_max=3):
        req = TraceRequest(process_id=PID, job_id="retry-ok")
        reader = JobReader(redis, KEYS, "retry-ok")
        await submit(redis, KEYS, req)
        final = await reader.terminal()
        assert final.state == JobState.SUCCEEDED and final.attempt == 3
        assert [s.attempt for s in reader.statuses() if s.state == JobState.RUNNING] == [1, 2, 3]
        assert reader.trace_bytes(3) == gen.expected(req)

    gen = ScriptedGenerator(fail_first=[SourceUnavailable("down")] * 3)
    async with Harness(redis_server.url, gen, retry_max=2):
        reader = JobReader(redis, KEYS, "retry-fail")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="retry-fail"))
        final = await reader.terminal()
        assert final.state == JobState.FAILED and final.error_code == ErrorCode.SOURCE_UNAVAILABLE
        assert final.retryable is True and final.attempt == 3 and "down" in (final.message or "")


async def test_unexpected_exception_fails_the_job_not_the_worker(
    redis_server: RedisServer, redis: Redis
) -> None:
    gen = ScriptedGenerator(fail_first=[ZeroDivisionError("boom")])
    async with Harness(redis_server.url, gen):
        reader = JobReader(redis, KEYS, "bug")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="bug"))
        final = await reader.terminal()
        assert final.state == JobState.FAILED and final.error_code == ErrorCode.INTERNAL
        assert "ZeroDivisionError: boom" in (final.message or "")
        # the worker still works
        reader2 = JobReader(redis, KEYS, "after-bug")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="after-bug"))
        assert (await reader2.terminal()).state == JobState.SUCCEEDED


async def test_cancel_stops_the_job(redis_server: RedisServer, redis: Redis) -> None:
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    async with Harness(redis_server.url, gen) as h:
        reader = JobReader(redis, KEYS, "cx")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="cx"))
        await reader.read_until(lambda e: e.type == "chunk")
        await redis.xadd(KEYS.cancels, {"job_id": "cx"})
        final = await reader.terminal()
        assert final.state == JobState.CANCELLED and final.request_id is not None
        await reader.read_until(
            lambda e: isinstance(e, StatusEvent) and e.state.terminal and e.request_id is None
        )
        await wait_until(lambda: _no_active(h), what="job ended")
        assert h.store.objects == {} and h.store.open_writers == 0
        events: Any = await redis.xrange(KEYS.events)
        assert events[-1][1][b"state"] == b"cancelled"


@pytest.mark.parametrize(
    ("fields", "job_id", "reason"),
    [
        ({"nothing": "here"}, None, "no `request` field"),
        ({"request": "not json"}, None, "invalid request"),
        ({"request": json.dumps({"process_id": "nope", "job_id": "bad-1"})}, "bad-1", "process_id"),
        (
            {"request": json.dumps({"process_id": PID, "span_types": "all", "job_id": "bad-2"})},
            "bad-2",
            "span_types",
        ),
        ({"request": json.dumps({"process_id": PID, "begin": "2026-01-01T10:00:00"})}, None, "begin"),
        ({"request": json.dumps({"process_id": PID, "job_id": "x" * 200})}, None, "job_id"),
        ({"request": json.dumps({"process_id": PID, "v": 2, "job_id": "bad-3"})}, "bad-3", "v"),
        (
            {"request": json.dumps({"process_id": PID, "job_id": "bad-4", "pad": "x" * 20000})},
            "bad-4",
            "limit",
        ),
        ({"request": "[1, 2]"}, None, "invalid request"),
        ({"request": b"\xff\xfe"}, None, "invalid request"),
    ],
)
async def test_invalid_input_is_dead_lettered_and_answered(
    redis_server: RedisServer, redis: Redis, fields: dict[str, Any], job_id: str | None, reason: str
) -> None:
    gen = ScriptedGenerator()
    async with Harness(redis_server.url, gen):
        entry = await submit(redis, KEYS, fields)
        ok = TraceRequest(process_id=PID, job_id="good-after")
        await submit(redis, KEYS, ok)
        assert (await JobReader(redis, KEYS, "good-after").terminal()).state == JobState.SUCCEEDED
        # The bad entry is handled beside the good one (concurrency 4), not before it: its dead letter
        # is written with its acknowledgement, so wait for every entry to be acknowledged.
        await wait_until(lambda: _pending_is(redis, 0), what="all entries acknowledged")
        dead: Any = await redis.xrange(KEYS.dead)
        assert len(dead) == 1
        d = dead[0][1]
        assert d[b"entry_id"] == entry.encode() and d[b"error_code"] == b"invalid_request"
        assert reason in d[b"reason"].decode()
        for name, value in fields.items():
            raw = value if isinstance(value, bytes) else value.encode()
            kept = d[f"orig:{name}".encode()]
            # Kept whole up to DEAD_ORIG_BYTES_MAX (a request at the size limit fits); the rest is cut.
            assert kept == raw or (raw.startswith(kept) and f"{name}={len(raw)}".encode() in d[b"truncated"])
        if job_id is not None:
            final = await JobReader(redis, KEYS, job_id).terminal()
            assert final.state == JobState.FAILED and final.error_code == ErrorCode.INVALID_REQUEST
            assert final.retryable is False and reason in (final.message or "")
        assert gen.calls == 1


async def test_stranded_entry_is_reclaimed_and_restarted(redis_server: RedisServer, redis: Redis) -> None:
    """An entry delivered to a consumer that died (no heartbeat) is taken over after the lease."""
    await ensure_group(redis, KEYS.requests, KEYS.group)
    req = TraceRequest(process_id=PID, job_id="stranded")
    entry = await submit(redis, KEYS, req)
    got: Any = await redis.xreadgroup(KEYS.group, "ghost", {KEYS.requests: ">"}, count=1)
    assert got[0][1][0][0].decode() == entry
    gen = ScriptedGenerator(chunks=2)
    async with Harness(redis_server.url, gen):
        final = await JobReader(redis, KEYS, "stranded").terminal()
        assert final.state == JobState.SUCCEEDED
    rows: Any = await redis.xpending(KEYS.requests, KEYS.group)
    assert rows["pending"] == 0


async def test_entry_over_the_delivery_cap_is_dead(redis_server: RedisServer, redis: Redis) -> None:
    await ensure_group(redis, KEYS.requests, KEYS.group)
    req = TraceRequest(process_id=PID, job_id="poison")
    entry = await submit(redis, KEYS, req)
    await redis.xreadgroup(KEYS.group, "ghost", {KEYS.requests: ">"}, count=1)
    for _ in range(3):  # three more crashed deliveries
        await redis.xclaim(KEYS.requests, KEYS.group, "ghost", 0, [entry])
    gen = ScriptedGenerator()
    async with Harness(redis_server.url, gen, max_deliveries=4):
        final = await JobReader(redis, KEYS, "poison").terminal()
        assert final.state == JobState.DEAD and final.error_code == ErrorCode.TOO_MANY_DELIVERIES
        dead: Any = await redis.xrange(KEYS.dead)
        assert dead[0][1][b"deliveries"] == b"5" and dead[0][1][b"orig:request"] == req.to_json().encode()
        assert gen.calls == 0


async def test_lost_lease_stops_the_attempt_without_a_status(redis_server: RedisServer, redis: Redis) -> None:
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    async with Harness(redis_server.url, gen) as h:
        reader = JobReader(redis, KEYS, "stolen")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="stolen"))
        await reader.read_until(lambda e: e.type == "chunk")
        await redis.set(KEYS.lock("stolen"), "other/1-1/9", px=60_000)  # another worker took it
        await wait_until(lambda: _lease_lost(h), what="lease loss noticed")
        await wait_until(lambda: _no_active(h), what="attempt stopped")
        assert [s.state for s in reader.statuses()] == [JobState.QUEUED, JobState.RUNNING]
        assert h.store.open_writers == 0 and h.store.objects == {}
        assert not await _pending_is(redis, 0)  # left for the new owner


async def _lease_lost(h: Harness) -> bool:
    registry = h.service.rt.metrics.registry
    return registry.get_sample_value("trace_worker_lease_losses_total") == 1.0


async def _no_active(h: Harness) -> bool:
    return not h.service.rt.active


async def test_job_timeout_fails_the_job(redis_server: RedisServer, redis: Redis) -> None:
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())  # never released: the job hangs
    async with Harness(redis_server.url, gen, job_timeout_s=0.5) as h:
        reader = JobReader(redis, KEYS, "slow")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="slow"))
        final = await reader.terminal()
        assert final.state == JobState.FAILED and final.error_code == ErrorCode.TIMEOUT
        assert "job_timeout_s=0.5" in (final.message or "") and final.attempt == 1
        assert h.store.objects == {} and h.store.open_writers == 0


async def test_a_job_shorter_than_the_progress_interval_writes_one_progress_entry(
    redis_server: RedisServer, redis: Redis
) -> None:
    """The first progress entry waits one interval: a short job writes only its final one."""
    req = TraceRequest(process_id=PID, job_id="short")
    async with Harness(redis_server.url, ScriptedGenerator(chunks=3), progress_interval_s=30):
        await submit(redis, KEYS, req)
        reader = JobReader(redis, KEYS, "short")
        assert (await reader.terminal()).state == JobState.SUCCEEDED
    progress = [e for e in reader.events if isinstance(e, ProgressEvent)]
    assert len(progress) == 1
    assert progress[0].spans == 30  # the generator's last report
