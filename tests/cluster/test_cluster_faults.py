"""Failures on a real Redis Cluster: a worker process SIGKILLed mid-job (another worker process
reclaims the request and finishes the job), and a master restarted mid-job (the worker and the
client ride it out; with AOF the master comes back with its data and slots)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts import ChunkEvent, JobState, Keys, TraceRequest, parse_entry
from contracts.client import TraceClient
from tests.service.support import JobReader, ScriptedGenerator, fast_settings, submit, wait_until
from tests.support.devserver import small_lake
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer
from worker.service.app import Service
from worker.sinks.blob.memory import MemoryBlobStore

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"
T = TypeVar("T")


@pytest.fixture(scope="module")
def busy_devserver() -> Iterator[DevServer]:
    """A process big enough that a job is still running when the test kills its worker."""
    with DevServer(small_lake(processes=("typical",), scale=3.0)).start() as server:
        yield server


async def test_worker_killed_mid_job_is_finished_by_another(  # noqa: PLR0917 - fixtures
    redis_cluster: RedisCluster,
    cluster_redis: AsyncRedisCluster,
    busy_devserver: DevServer,
    spawn_worker: Spawn,
    prefix: str,
    tmp_path: Path,
) -> None:
    keys = Keys(prefix)
    env = worker_env(
        redis_cluster.url,
        busy_devserver.url,
        tmp_path.as_uri(),
        TRACE_WORKER_REDIS_CLUSTER="true",
        TRACE_WORKER_KEY_PREFIX=prefix,
    )
    process = busy_devserver.lake.processes[0]
    req = TraceRequest(process_id=process.process_id)
    job_id = req.effective_job_id()
    reader = JobReader(cluster_redis, keys, job_id)
    a = spawn_worker(env, "a")
    await submit(cluster_redis, keys, req)
    await reader.read_until(lambda e: e.type == "chunk" and e.attempt == 1, within=120)
    a.kill()  # SIGKILL mid-job: the entry stays in a's pending list, its lock expires
    a.wait(timeout=10)
    spawn_worker(env, "b")
    final = await reader.terminal(within=180)
    assert final.state == JobState.SUCCEEDED and final.attempt == 2, reader.summary()
    assert [s.state for s in reader.statuses() if s.state.terminal] == [JobState.SUCCEEDED]
    data = reader.trace_bytes(2)
    blob = (tmp_path / process.process_id / f"{job_id}.pftrace").read_bytes()
    assert data == blob and hashlib.sha256(blob).hexdigest() == final.sha256
    # The killed attempt's chunks went with the job's end: only attempt 2's are left.
    entries: Any = await cluster_redis.xrange(keys.job(job_id))
    left = [e for e in (parse_entry(f) for _, f in entries) if isinstance(e, ChunkEvent)]
    assert {c.attempt for c in left} == {2} and [c.seq for c in left] == list(range(final.chunks or 0))
    assert hashlib.sha256(b"".join(c.data for c in left)).hexdigest() == final.sha256
    assert not await cluster_redis.exists(keys.chunk_ids(job_id))
    summary: Any = await cluster_redis.xpending(keys.requests, keys.group)
    assert summary["pending"] == 0


async def _through_restart(op: Callable[[], Awaitable[T]]) -> T:
    """The test's own reads see the restart too: retry until the master is back."""
    for _ in range(600):
        try:
            return await op()
        except (RedisConnectionError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("the master did not come back")


async def test_master_restarted_mid_job(caplog: pytest.LogCaptureFixture) -> None:
    cluster = RedisCluster(persistence=True).start()
    keys = Keys("r")
    # The job's keys and the request stream on the master that restarts: the job's writes, the
    # heartbeat, the subscriber's XREADGROUP and the final XACK all meet it.
    master = cluster.node_of(keys.requests)
    job_id = next(f"restart-{i}" for i in range(1000) if cluster.node_of(keys.job(f"restart-{i}")) is master)
    others = [n for n in cluster.nodes if n is not master]
    redis = AsyncRedisCluster.from_url(cluster.url)
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    settings = fast_settings(cluster.url, key_prefix="r", redis_cluster=True, lease_s=30.0, heartbeat_s=0.5)
    service = Service(settings, generator=gen, store=MemoryBlobStore())
    try:
        await service.start()
        async with TraceClient(cluster.url, "r", cluster=True, reconnect_timeout_s=90) as client:
            req = TraceRequest(process_id=PID, job_id=job_id)
            handle = await client.submit(req)
            reader = JobReader(redis, keys, job_id)
            await reader.read_until(lambda e: e.type == "chunk")
            caplog.set_level(logging.WARNING, logger="worker.service")
            master.stop()  # SIGKILL, mid-job
            # down long enough that the worker's heartbeat fails on it, and that the other
            # masters mark it failed (then they answer CLUSTERDOWN to every command)
            await wait_until(
                lambda: _logged(caplog, "heartbeat: redis unavailable"), what="heartbeat failure"
            )
            await wait_until(lambda: _all_say(cluster, others, "fail"), what="cluster_state:fail")
            master.start()
            cluster.wait_ok()
            assert gen.gate is not None
            gen.gate.set()
            final = await _through_restart(lambda: handle.wait(timeout=120))
            assert final.state == JobState.SUCCEEDED, final
            await _through_restart(
                lambda: reader.read_until(lambda e: getattr(e, "state", None) == JobState.SUCCEEDED)
            )
            assert reader.trace_bytes(final.attempt) == gen.expected(req)
            # the subscriber reads the request stream again after the restart
            after = await client.submit(TraceRequest(process_id=PID, job_id=f"{job_id}-after"))
            assert (await after.wait(timeout=120)).state == JobState.SUCCEEDED

            # every master down at once mid-job (no node answers: redis-py's "Redis Cluster cannot
            # be connected"), then back: the job goes on, nothing is dead-lettered
            gen.gate = asyncio.Event()
            whole = await client.submit(TraceRequest(process_id=PID, job_id="all-down"))
            await JobReader(redis, keys, "all-down").read_until(lambda e: e.type == "chunk")
            caplog.clear()
            for node in cluster.nodes:
                node.stop()
            await wait_until(lambda: _logged(caplog, "cannot be connected"), what="the worker sees no node")
            for node in cluster.nodes:
                node.start()
            cluster.wait_ok()
            gen.gate.set()
            assert (await _through_restart(lambda: whole.wait(timeout=120))).state == JobState.SUCCEEDED
            assert await redis.xlen(keys.dead) == 0
    finally:
        await service.stop()
        await redis.aclose()
        cluster.close()


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def _all_say(cluster: RedisCluster, nodes: list[RedisServer], state: str) -> bool:
    return all(cluster.state(n) == state for n in nodes)
