"""A request entry trimmed away while its worker is dead (issue 10 item 7).

Steps: worker 1 takes a job and is SIGKILLed; another requester XADDs with exact ``MAXLEN 1``
(trimming the first entry); worker 2 starts. Redis 7's XCLAIM silently drops the missing entry from
the pending list; the job must still end in a terminal state a requester sees, and nothing of it may
stay behind without a TTL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, TraceRequest
from contracts.events import ChunkEvent
from tests.faults.workers import KEYS
from tests.service.support import JobReader, submit, wait_until
from tests.support.devserver import start_devserver
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer, Lake, LakeConfig
from worker.service.finish import inflight_key


@pytest.fixture(scope="module")
def slow_devserver() -> Iterator[DevServer]:
    """A process long enough to kill its worker mid-job, and a small one."""
    lake = Lake(LakeConfig(seed=42, processes=("large", "small"), large_spans=1_000_000))
    with start_devserver(lake) as server:
        yield server


async def test_trimmed_entry_of_a_dead_worker_ends_failed(
    redis_server: RedisServer, slow_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    env = worker_env(redis_server.url, slow_devserver.url, (tmp_path / "blobs").as_uri())
    large, small = (p.process_id for p in slow_devserver.lake.processes)
    first = TraceRequest(process_id=large, job_id="orphaned")
    second = TraceRequest(process_id=small, job_id="trimmer")
    redis = Redis.from_url(redis_server.url)
    try:
        worker1 = spawn_worker(env, "a")
        reader = JobReader(redis, KEYS, "orphaned")
        await submit(redis, KEYS, first)
        await reader.read_until(lambda e: isinstance(e, ChunkEvent), within=120)
        worker1.kill()
        worker1.wait(timeout=30)
        # another requester trims the request stream to its own entry (exact MAXLEN 1)
        await redis.xadd(KEYS.requests, {"request": second.to_json()}, maxlen=1, approximate=False)
        assert await redis.xlen(KEYS.requests) == 1
        spawn_worker(env, "b")
        final = await reader.terminal(within=120)
        assert final.state == JobState.FAILED and final.error_code == ErrorCode.INTERNAL, final
        assert final.retryable is True and final.message is not None
        assert "removed from t:requests" in final.message and "resubmit" in final.message
        state: Any = await redis.hgetall(KEYS.state("orphaned"))
        assert state[b"state"] == b"failed"
        assert await redis.ttl(KEYS.state("orphaned")) > 0
        assert await redis.ttl(KEYS.status_stream("orphaned")) > 0
        done = await JobReader(redis, KEYS, "trimmer").terminal(within=120)
        assert done.state == JobState.SUCCEEDED, done

        async def nothing_in_flight() -> bool:
            return await redis.hlen(inflight_key(KEYS)) == 0

        # every record of an entry being worked on is gone once its job ended
        await wait_until(nothing_in_flight, within=30, what="in-flight records dropped")
    finally:
        await redis.aclose()
