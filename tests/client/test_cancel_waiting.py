"""Cancels of jobs whose requests still wait on the request stream, and of jobs that never existed
(docs/PROTOCOL.md §5), with plain Redis commands against a real worker process, the devserver and a
real redis-server.

The worker has one job slot, held by a job whose Flight SQL connection is stalled (the chaos
proxy), so the requests under test stay unpicked for as long as the test wants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from contracts import JobState, Keys, StatusEvent, TraceRequest
from contracts.events import CancelEvent, CancelOutcome
from tests.service.support import JobReader, submit, validate_redis
from tests.support.chaos import ChaosProxy
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer

KEYS = Keys("t")


async def cancel(redis: aioredis.Redis, job_id: str, request_id: str | None = None) -> CancelEvent:
    """XADD a cancel entry and read its answer (the `cancel` entry naming its id) on the job stream."""
    fields = {"job_id": job_id} | ({"request_id": request_id} if request_id else {})
    cancel_id: Any = await redis.xadd(KEYS.cancels, fields)  # type: ignore[arg-type]
    reader = JobReader(redis, KEYS, job_id)
    ack = await reader.read_until(
        lambda e: isinstance(e, CancelEvent) and e.cancel_id == cancel_id.decode(), within=120
    )
    assert isinstance(ack, CancelEvent)
    return ack


@asynccontextmanager
async def stuck_worker(
    redis: aioredis.Redis, devserver: DevServer, spawn_worker: Spawn, redis_url: str, blobs: Path
) -> AsyncIterator[ChaosProxy]:
    """A worker with one job slot, held by job ``blocker`` stalled on Flight SQL; yields the proxy
    (stalled). The caller releases the slot with a cancel of ``blocker``."""
    with ChaosProxy(("127.0.0.1", devserver.port)) as proxy:
        env = worker_env(redis_url, f"grpc://127.0.0.1:{proxy.port}", blobs.as_uri(),
                         TRACE_WORKER_WORKER_CONCURRENCY="1")  # fmt: skip
        spawn_worker(env)
        small = devserver.lake.processes[0].process_id
        warm = TraceRequest(process_id=small, job_id="warm-up")
        entry = await submit(redis, KEYS, warm)  # the worker serves: it is up
        done = await JobReader(redis, KEYS, "warm-up").read_until(_answer_to(entry), within=120)
        assert isinstance(done, StatusEvent) and done.state == JobState.SUCCEEDED
        proxy.set_mode("stall")
        entry = await submit(redis, KEYS, TraceRequest(process_id=small, job_id="blocker"))
        await JobReader(redis, KEYS, "blocker").read_until(_answer_to(entry, JobState.RUNNING), within=120)
        yield proxy


def _answer_to(entry: str, state: JobState | None = None) -> Any:
    def pred(e: object) -> bool:
        if not isinstance(e, StatusEvent) or e.request_id != entry:
            return False
        return e.state == state if state is not None else e.state.terminal

    return pred


async def test_a_cancel_without_request_id_cancels_the_waiting_requests_at_pickup(
    redis: aioredis.Redis,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    blobs = tmp_path / "blobs"
    small = devserver.lake.processes[0].process_id
    request = TraceRequest(process_id=small, job_id="held")
    async with stuck_worker(redis, devserver, spawn_worker, redis_server.url, blobs) as proxy:
        first = await submit(redis, KEYS, request.model_copy(update={"labels": {"who": "a"}}))
        second = await submit(redis, KEYS, request.model_copy(update={"labels": {"who": "b"}}))
        ack = await cancel(redis, "held")
        assert (ack.outcome, ack.request_id) == (CancelOutcome.PENDING, None), ack
        assert ack.detail is not None and ack.detail.startswith("2 waiting request(s)")
        waiting: Any = await redis.xrange(KEYS.requests)
        assert {first, second} <= {i.decode() for i, _ in waiting}  # not picked up yet
        reader = JobReader(redis, KEYS, "held")
        await reader.read_until(lambda e: isinstance(e, CancelEvent))
        assert [e.type for e in reader.events] == ["cancel"]  # nothing else happened to the job

        stopped = await cancel(redis, "blocker")  # frees the slot: the held requests are picked up
        assert stopped.outcome == CancelOutcome.CANCELLED
        job_end = await reader.read_until(
            lambda e: isinstance(e, StatusEvent) and e.state.terminal and e.request_id is None, within=120
        )
        assert isinstance(job_end, StatusEvent)
        assert (job_end.state, job_end.attempt) == (JobState.CANCELLED, 0)
        statuses = reader.statuses()
        for entry, who in ((first, "a"), (second, "b")):
            mine = [s for s in statuses if s.request_id == entry]
            assert [s.state for s in mine] == [JobState.QUEUED, JobState.CANCELLED], reader.summary()
            assert mine[-1].labels == {"who": who}
        assert not any(s.state == JobState.RUNNING for s in statuses)  # never ran
        state: Any = await redis.hgetall(KEYS.state("held"))
        assert (state[b"state"], state[b"attempt"]) == (b"cancelled", b"0")
        assert not (blobs / small / "held.pftrace").exists()
        assert not await redis.exists(KEYS.cancelled("held"))  # the holds were used up
        left: Any = await redis.xrange(KEYS.requests)
        assert not {first, second} & {i.decode() for i, _ in left}
        for key in (KEYS.status_stream("held"), KEYS.state("held")):
            assert await redis.ttl(key) > 3600  # the job's TTL, not a short one
        assert await redis.ttl(KEYS.job("held")) > 600  # chunk_ttl_s (1 h), not a short one either

        # a later request runs: the cancel named the requests that waited then
        proxy.set_mode("pass")
        again = await submit(redis, KEYS, request)
        final = await reader.read_until(_answer_to(again), within=120)
        assert isinstance(final, StatusEvent) and (final.state, final.attempt) == (JobState.SUCCEEDED, 1)
        assert (blobs / small / "held.pftrace").exists()
    assert await validate_redis(redis, KEYS) > 20


async def test_a_cancel_of_a_job_that_never_existed_leaves_only_short_lived_streams(
    redis: aioredis.Redis,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    blobs = tmp_path / "blobs"
    spawn_worker(worker_env(redis_server.url, devserver.url, blobs.as_uri()))
    for request_id in (None, "1-0"):
        ack = await cancel(redis, "ghost", request_id)
        assert ack.outcome == CancelOutcome.NOT_FOUND
    keys = sorted([k async for k in redis.scan_iter(match="t:job:{ghost}*")])
    assert keys == sorted([KEYS.job("ghost").encode(), KEYS.status_stream("ghost").encode()])
    for key in keys:
        assert 0 < await redis.ttl(key) <= 60  # the answer can be read; it does not stay for a day
    # a request for that job id later: its streams get the job's TTL, and it runs
    small = devserver.lake.processes[0].process_id
    entry = await submit(redis, KEYS, TraceRequest(process_id=small, job_id="ghost"))
    final = await JobReader(redis, KEYS, "ghost").read_until(_answer_to(entry), within=120)
    assert isinstance(final, StatusEvent) and final.state == JobState.SUCCEEDED
    assert await redis.ttl(KEYS.status_stream("ghost")) > 3600  # job_ttl_s
    assert await redis.ttl(KEYS.job("ghost")) > 600  # chunk_ttl_s (1 h)


async def test_a_cancel_naming_another_jobs_waiting_request_is_not_found(
    redis: aioredis.Redis,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    """A request_id must name a request for the cancel's job: R4 waits for w-2, a cancel of
    ``ghost-1`` (no such job) or of the running ``blocker`` naming R4 changes nothing."""
    blobs = tmp_path / "blobs"
    small = devserver.lake.processes[0].process_id
    async with stuck_worker(redis, devserver, spawn_worker, redis_server.url, blobs) as proxy:
        r4 = await submit(redis, KEYS, TraceRequest(process_id=small, job_id="w-2"))
        ghost = await cancel(redis, "ghost-1", r4)
        assert (ghost.outcome, ghost.request_id) == (CancelOutcome.NOT_FOUND, r4), ghost
        keys = sorted([k async for k in redis.scan_iter(match="t:job:{ghost-1}*")])
        assert keys == sorted([KEYS.job("ghost-1").encode(), KEYS.status_stream("ghost-1").encode()])
        for key in keys:
            assert 0 < await redis.ttl(key) <= 60
        running = await cancel(redis, "blocker", r4)  # running job, request of another job
        assert running.outcome == CancelOutcome.NOT_FOUND, running
        assert not await redis.exists(KEYS.cancelled("blocker"))
        state: Any = await redis.hget(KEYS.state("blocker"), "state")
        assert state == b"running"

        proxy.set_mode("pass")
        assert (await cancel(redis, "blocker")).outcome == CancelOutcome.CANCELLED
        final = await JobReader(redis, KEYS, "w-2").read_until(_answer_to(r4), within=120)
        assert isinstance(final, StatusEvent) and final.state == JobState.SUCCEEDED, final  # R4 ran
