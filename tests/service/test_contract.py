"""The wire contract's correlation, cancel and dedupe rules (docs/PROTOCOL.md §2, §5, §7) against a
real redis-server and the service with a scripted generator: every answer names its request entry,
shared jobs answer each requester, cancels detach, nothing a cancel leaves ends a later run, a job id
names one request, and open-ended requests are reused only within ``max_age_s``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, Keys, StatusEvent, TraceRequest
from contracts.events import CancelEvent, CancelOutcome
from tests.service.support import (
    PID,
    JobReader,
    ScriptedGenerator,
    fast_settings,
    submit,
    validate_redis,
    wait_until,
)
from tests.support.redis_server import RedisServer
from worker.service.app import Service
from worker.sinks.blob.memory import MemoryBlobStore

KEYS = Keys("t")
OTHER_PID = "11111111-2222-4333-8444-555555555555"


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


def answer_to(entry: str, *, terminal: bool = True) -> Any:
    def pred(e: object) -> bool:
        return isinstance(e, StatusEvent) and e.request_id == entry and (e.state.terminal or not terminal)

    return pred


def running_answer_to(entry: str) -> Any:
    def pred(e: object) -> bool:
        return isinstance(e, StatusEvent) and e.request_id == entry and e.state == JobState.RUNNING

    return pred


async def cancel(redis: Redis, reader: JobReader, job_id: str, request_id: str | None = None) -> CancelEvent:
    fields = {"job_id": job_id} | ({"request_id": request_id} if request_id else {})
    cancel_id: Any = await redis.xadd(KEYS.cancels, fields)  # type: ignore[arg-type]
    ack = await reader.read_until(lambda e: isinstance(e, CancelEvent) and e.cancel_id == cancel_id.decode())
    assert isinstance(ack, CancelEvent)
    return ack


async def test_shared_job_each_requester_gets_its_own_answer_and_cancel_detaches(
    redis_server: RedisServer, redis: Redis
) -> None:
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    job = "shared-1"
    async with Harness(redis_server.url, gen):
        reader = JobReader(redis, KEYS, job)
        alice = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id=job, labels={"who": "alice"}))
        await reader.read_until(lambda e: e.type == "chunk")
        bob = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id=job, labels={"who": "bob"}))
        carol = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id=job, labels={"who": "carol"}))
        for entry in (bob, carol):
            queued = await reader.read_until(answer_to(entry, terminal=False))
            assert isinstance(queued, StatusEvent) and queued.state == JobState.QUEUED
            joined = await reader.read_until(running_answer_to(entry))
            assert isinstance(joined, StatusEvent) and "joined" in (joined.detail or "")

        # Bob cancels his request only: he is answered at once, the job goes on
        ack = await cancel(redis, reader, job, bob)
        assert ack.outcome == CancelOutcome.DETACHED and ack.request_id == bob
        mine = await reader.read_until(answer_to(bob))
        assert isinstance(mine, StatusEvent) and mine.state == JobState.CANCELLED
        assert mine.labels == {"who": "bob"}

        assert gen.gate is not None
        gen.gate.set()
        answers = {}
        for entry in (alice, carol):
            final = await reader.read_until(answer_to(entry))
            assert isinstance(final, StatusEvent)
            answers[entry] = final
        assert answers[alice].state == answers[carol].state == JobState.SUCCEEDED
        assert answers[alice].labels == {"who": "alice"} and answers[carol].labels == {"who": "carol"}
        assert answers[alice].sha256 == answers[carol].sha256 and answers[alice].sha256 is not None
        # each answer is on the events stream too, so a bot driven by it answers every requester
        events: Any = await redis.xrange(KEYS.events)
        terminal = [f[b"request_id"].decode() for _, f in events if f[b"state"] == b"succeeded"]
        assert sorted(terminal) == sorted([alice, carol])
        assert gen.calls == 1
        assert await validate_redis(redis, KEYS) > 20


async def test_the_job_stops_when_no_requester_wants_it(redis_server: RedisServer, redis: Redis) -> None:
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    job = "shared-2"
    async with Harness(redis_server.url, gen) as h:
        reader = JobReader(redis, KEYS, job)
        a = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id=job, labels={"who": "a"}))
        await reader.read_until(lambda e: e.type == "chunk")
        b = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id=job, labels={"who": "b"}))
        await reader.read_until(running_answer_to(b))
        assert (await cancel(redis, reader, job, a)).outcome == CancelOutcome.DETACHED
        assert (await cancel(redis, reader, job, b)).outcome == CancelOutcome.CANCELLED
        final = await reader.read_until(
            lambda e: isinstance(e, StatusEvent) and e.state.terminal and not e.request_id
        )
        assert isinstance(final, StatusEvent) and final.state == JobState.CANCELLED
        await wait_until(lambda: _idle(h), what="job ended")
        assert h.store.objects == {}
        state: Any = await redis.hget(KEYS.state(job), "state")
        assert state == b"cancelled"


async def _idle(h: Harness) -> bool:
    return not h.service.rt.active


async def test_cancel_of_unknown_or_ended_jobs_is_reported_and_leaves_nothing(
    redis_server: RedisServer, redis: Redis
) -> None:
    gen = ScriptedGenerator(chunks=2)
    async with Harness(redis_server.url, gen):
        reader = JobReader(redis, KEYS, "later")
        ack = await cancel(redis, reader, "later")
        assert ack.outcome == CancelOutcome.NOT_FOUND
        assert await redis.ttl(KEYS.job("later")) > 0  # the answer expires
        # a later run with that id is not touched by the earlier cancel
        entry = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="later"))
        final = await reader.read_until(answer_to(entry))
        assert isinstance(final, StatusEvent) and final.state == JobState.SUCCEEDED
        # a cancel after the end changes nothing, and a resubmission is not killed by it
        ack = await cancel(redis, reader, "later", entry)
        assert ack.outcome == CancelOutcome.ALREADY_ENDED
        ack = await cancel(redis, reader, "later")
        assert ack.outcome == CancelOutcome.ALREADY_ENDED
        assert await redis.hget(KEYS.state("later"), "state") == b"succeeded"
        leftovers = [k async for k in redis.scan_iter(match="t:job:{later}:*")]
        assert sorted(leftovers) == sorted(
            k.encode() for k in (KEYS.state("later"), KEYS.status_stream("later"))
        )
        for key in leftovers:  # and every key the job has expires
            assert await redis.ttl(key) > 0
        # an invalid cancel is dead-lettered
        await redis.xadd(KEYS.cancels, {"job_id": "bad id!"})
        await wait_until(lambda: _dead_count(redis, 1), what="invalid cancel dead-lettered")
        assert await validate_redis(redis, KEYS) > 10


async def _dead_count(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(KEYS.dead)) == n


async def test_a_request_cancelled_before_pickup_never_runs(redis_server: RedisServer, redis: Redis) -> None:
    gen = ScriptedGenerator(chunks=2, gate=asyncio.Event())
    async with Harness(redis_server.url, gen, worker_concurrency=1):
        busy = JobReader(redis, KEYS, "busy")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="busy"))
        await busy.read_until(lambda e: e.type == "chunk")  # the only slot is taken
        reader = JobReader(redis, KEYS, "early")
        entry = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="early"))
        ack = await cancel(redis, reader, "early", entry)
        assert ack.outcome == CancelOutcome.PENDING
        assert gen.gate is not None
        gen.gate.set()
        final = await reader.read_until(answer_to(entry))
        assert isinstance(final, StatusEvent) and final.state == JobState.CANCELLED
        assert gen.calls == 1  # "early" never ran
        # a later request for the same job runs: the cancel named the old request only
        again = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="early"))
        ok = await reader.read_until(answer_to(again))
        assert isinstance(ok, StatusEvent) and ok.state == JobState.SUCCEEDED


async def test_a_job_id_names_one_request(redis_server: RedisServer, redis: Redis) -> None:
    """A request for another process under a taken job id is refused, never answered with the job's
    trace; a derived id (t-...) cannot be claimed by a request it was not derived from."""
    gen = ScriptedGenerator(chunks=2)
    async with Harness(redis_server.url, gen):
        reader = JobReader(redis, KEYS, "victim-1")
        first = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="victim-1"))
        assert (await reader.read_until(answer_to(first))).state == JobState.SUCCEEDED  # type: ignore[union-attr]
        other = await submit(redis, KEYS, TraceRequest(process_id=OTHER_PID, job_id="victim-1"))
        refused = await reader.read_until(answer_to(other))
        assert isinstance(refused, StatusEvent) and refused.state == JobState.FAILED
        assert refused.error_code == ErrorCode.JOB_ID_CONFLICT and refused.sha256 is None
        assert await redis.hget(KEYS.state("victim-1"), "state") == b"succeeded"
        assert gen.calls == 1

        victim = TraceRequest(process_id=PID)
        forged = {"process_id": OTHER_PID, "job_id": victim.effective_job_id()}
        with pytest.raises(ValidationError, match="derived"):
            TraceRequest.model_validate(forged)
        entry = await submit(redis, KEYS, json.dumps(forged))
        dead = JobReader(redis, KEYS, victim.effective_job_id())
        answer = await dead.read_until(answer_to(entry))
        assert isinstance(answer, StatusEvent) and answer.error_code == ErrorCode.INVALID_REQUEST


async def test_an_invalid_request_naming_a_job_is_answered_on_its_stream(
    redis_server: RedisServer, redis: Redis
) -> None:
    gen = ScriptedGenerator(chunks=2)
    async with Harness(redis_server.url, gen):
        reader = JobReader(redis, KEYS, "known")
        ok = await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="known"))
        await reader.read_until(answer_to(ok))
        bad = await submit(redis, KEYS, '{"process_id": "nope", "job_id": "known"}')
        answer = await reader.read_until(answer_to(bad))
        assert isinstance(answer, StatusEvent) and answer.state == JobState.FAILED
        assert answer.error_code == ErrorCode.INVALID_REQUEST and "process_id" in (answer.message or "")
        assert await redis.hget(KEYS.state("known"), "state") == b"succeeded"  # the job is untouched
        assert await validate_redis(redis, KEYS) > 5


async def test_an_invalid_request_without_job_id_is_answered_on_its_derived_stream(
    redis_server: RedisServer, redis: Redis
) -> None:
    """Fields outside the derived id (labels, v, max_age_s) that fail validation do not hide the
    job: the answer is on the derived job's stream. A bad id field (span_types) leaves only the
    dead letter, whose entry_id is the request id."""
    async with Harness(redis_server.url, ScriptedGenerator(chunks=2)):
        derived = TraceRequest(process_id=PID).effective_job_id()
        reader = JobReader(redis, KEYS, derived)
        for extra, field in (
            ({"labels": {"a": 1}}, "labels"),
            ({"v": "1"}, "v"),
            ({"max_age_s": 1.5}, "max_age_s"),
        ):
            entry = await submit(redis, KEYS, json.dumps({"process_id": PID} | extra))
            answer = await reader.read_until(answer_to(entry))
            assert isinstance(answer, StatusEvent) and answer.state == JobState.FAILED, answer
            assert answer.error_code == ErrorCode.INVALID_REQUEST and field in (answer.message or "")
        assert not await redis.exists(KEYS.lock(derived))  # nothing ran
        entry = await submit(redis, KEYS, json.dumps({"process_id": PID, "span_types": "BOTH"}))
        dead: Any = []
        async with asyncio.timeout(60):  # the dead letter names the request id as entry_id
            while not any(f.get(b"entry_id") == entry.encode() for _, f in dead):
                reply: Any = await redis.xread({KEYS.dead: "0-0"}, block=2000, count=100)
                dead = reply[0][1] if reply else []
        assert await validate_redis(redis, KEYS) > 5


async def test_open_ended_requests_are_reused_only_within_max_age(
    redis_server: RedisServer, redis: Redis
) -> None:
    gen = ScriptedGenerator(chunks=2)
    async with Harness(redis_server.url, gen):
        open_req = TraceRequest(process_id=PID)
        reader = JobReader(redis, KEYS, open_req.effective_job_id())
        first = await submit(redis, KEYS, open_req)
        done = await reader.read_until(answer_to(first))
        assert isinstance(done, StatusEvent) and done.attempt == 1
        again = await submit(redis, KEYS, open_req)  # within the default 60 s: the same answer
        reused = await reader.read_until(answer_to(again))
        assert (
            isinstance(reused, StatusEvent) and reused.attempt == 1 and "duplicate" in (reused.detail or "")
        )
        fresh_req = open_req.model_copy(update={"max_age_s": 0})
        assert fresh_req.effective_job_id() == open_req.effective_job_id()  # max_age_s is not in the id
        fresh = await submit(redis, KEYS, fresh_req)
        rerun = await reader.read_until(answer_to(fresh))
        assert isinstance(rerun, StatusEvent) and rerun.state == JobState.SUCCEEDED and rerun.attempt == 2
        assert gen.calls == 2

        closed = TraceRequest.model_validate(
            {
                "process_id": PID,
                "begin": "2026-01-01T00:00:00Z",
                "end": "2026-01-01T01:00:00Z",
                "max_age_s": None,
            }
        )
        creader = JobReader(redis, KEYS, closed.effective_job_id())
        c1 = await submit(redis, KEYS, closed)
        await creader.read_until(answer_to(c1))
        c2 = await submit(redis, KEYS, closed)
        dup = await creader.read_until(answer_to(c2))
        assert isinstance(dup, StatusEvent) and dup.attempt == 1 and gen.calls == 3
        assert await validate_redis(redis, KEYS) > 10
