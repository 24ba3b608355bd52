"""The core service paths on a real Redis Cluster (three masters, no replicas): a whole job,
duplicates, cancel, dead letters, the client following 50 jobs spread over every master, and the
worker's writes that span a job's hash slot and the shared streams.

Job ids are picked so that a job's keys and the shared streams live on different masters (a
cross-slot transaction would fail there with CROSSSLOT). Worker processes killed mid-job and a
master restarted mid-job: test_cluster_faults.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from contracts import ErrorCode, JobState, Keys, StatusEvent, TraceRequest
from contracts.client import TraceClient
from contracts.events import CancelOutcome
from tests.service.support import (
    JobReader,
    ScriptedGenerator,
    fast_settings,
    submit,
    validate_redis,
    wait_until,
)
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from worker.service.app import Service
from worker.sinks.blob.memory import MemoryBlobStore

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


class Harness:
    """An in-process worker on the cluster (scripted generator, in-memory blob store)."""

    def __init__(
        self, cluster: RedisCluster, prefix: str, generator: ScriptedGenerator, **overrides: Any
    ) -> None:
        self.generator = generator
        self.store = MemoryBlobStore()
        settings = fast_settings(cluster.url, key_prefix=prefix, redis_cluster=True, **overrides)
        self.service = Service(settings, generator=generator, store=self.store)

    async def __aenter__(self) -> Harness:
        await self.service.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.service.stop()


def job_id_where(stem: str, good: Callable[[str], bool]) -> str:
    """The first of ``<stem>-0``, ``<stem>-1``, ... that ``good`` accepts (slots are deterministic)."""
    for i in range(1000):
        job_id = f"{stem}-{i}"
        if good(job_id):
            return job_id
    raise AssertionError(f"no job id for {stem}")


def apart(cluster: RedisCluster, keys: Keys, *streams: str) -> Callable[[str], bool]:
    """Whether a job's keys live on another master than each of ``streams`` (default: the request
    and events streams, which every answer writes too)."""
    shared = {cluster.node_of(k).port for k in (streams or (keys.requests, keys.events))}
    return lambda job_id: cluster.node_of(keys.job(job_id)).port not in shared


async def pending(redis: AsyncRedisCluster, keys: Keys) -> int:
    summary: Any = await redis.xpending(keys.requests, keys.group)
    return int(summary["pending"])


async def test_whole_job_across_masters(
    redis_cluster: RedisCluster, cluster_redis: AsyncRedisCluster, prefix: str
) -> None:
    keys = Keys(prefix)
    job_id = job_id_where("whole", apart(redis_cluster, keys))
    gen = ScriptedGenerator(chunks=4)
    req = TraceRequest(process_id=PID, job_id=job_id, labels={"requested_by": "test"})
    entry = await submit(cluster_redis, keys, req)  # before any worker: the group starts at 0
    async with Harness(redis_cluster, prefix, gen) as h:
        reader = JobReader(cluster_redis, keys, job_id)
        final = await reader.terminal()
        assert final.state == JobState.SUCCEEDED and final.attempt == 1, reader.summary()
        data = reader.trace_bytes(final.attempt)
        assert data == gen.expected(req) == h.store.objects[f"{PID}/{job_id}.pftrace"]
        assert final.sha256 == hashlib.sha256(data).hexdigest() and final.chunks == 4
        assert [s.state for s in reader.statuses()] == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]
        assert {s.request_id for s in reader.statuses()} == {entry}
        # the shared streams, on other masters, get their part of every write right after the
        # job's own MULTI: the events entry, then the acknowledgement
        await wait_until(lambda: _is(pending(cluster_redis, keys), 0), what="request acknowledged")
        events: Any = await cluster_redis.xrange(keys.events)
        assert [e[1][b"state"] for e in events] == [b"queued", b"running", b"succeeded"]
        assert await cluster_redis.xlen(keys.requests) == 0  # XACK + XDEL
        assert not await cluster_redis.exists(keys.lock(job_id))
        assert 0 < await cluster_redis.ttl(keys.job(job_id)) <= 24 * 3600
        state: Any = await cluster_redis.hgetall(keys.state(job_id))
        assert state[b"state"] == b"succeeded"
        assert h.service.rt.slots is not None  # transactions went to the job's master directly
        assert await validate_redis(cluster_redis, keys) >= 10


async def _is(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_duplicates_start_no_work(
    redis_cluster: RedisCluster, cluster_redis: AsyncRedisCluster, prefix: str
) -> None:
    keys = Keys(prefix)
    job_id = job_id_where("dup", apart(redis_cluster, keys))
    gen = ScriptedGenerator(chunks=2, gate=asyncio.Event())
    req = TraceRequest(process_id=PID, job_id=job_id)
    async with Harness(redis_cluster, prefix, gen):
        reader = JobReader(cluster_redis, keys, job_id)
        await submit(cluster_redis, keys, req)
        await reader.read_until(lambda e: e.type == "chunk")
        second = await submit(cluster_redis, keys, req)  # while running: attached to the job

        def answers(request_id: str, *states: JobState) -> Callable[[Any], bool]:
            return lambda e: isinstance(e, StatusEvent) and e.request_id == request_id and e.state in states

        joined = await reader.read_until(answers(second, JobState.RUNNING))
        assert isinstance(joined, StatusEvent) and "duplicate" in (joined.detail or "")
        assert gen.gate is not None
        gen.gate.set()
        done = await reader.read_until(answers(second, JobState.SUCCEEDED))  # its own answer at the end
        third = await submit(cluster_redis, keys, req)  # after success: the job's outcome, no work
        again = await reader.read_until(answers(third, JobState.SUCCEEDED))
        assert isinstance(done, StatusEvent) and isinstance(again, StatusEvent)
        assert again.sha256 == done.sha256 is not None and "duplicate" in (again.detail or "")
        assert gen.calls == 1
        await wait_until(lambda: _is(pending(cluster_redis, keys), 0), what="every request acknowledged")


async def test_cancel_through_the_client(redis_cluster: RedisCluster, prefix: str) -> None:
    keys = Keys(prefix)
    job_id = job_id_where("cancel", apart(redis_cluster, keys, keys.requests, keys.cancels))
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    async with (
        Harness(redis_cluster, prefix, gen) as h,
        TraceClient(redis_cluster.url, prefix, cluster=True, reconnect_timeout_s=30) as client,
    ):
        handle = await client.submit(TraceRequest(process_id=PID, job_id=job_id))
        async with asyncio.timeout(60):
            async for event in handle.events():
                if event.type == "progress":
                    break
        answer = await handle.cancel(timeout=30)
        assert answer is not None and answer.outcome == CancelOutcome.CANCELLED, answer
        final = await handle.wait(timeout=60)
        assert final.state == JobState.CANCELLED and final.request_id == handle.request_id
        assert h.store.objects == {}
        assert (await handle.state()) is not None
        cancels: Any = await client.redis.xlen(keys.cancels)
        assert cancels == 0  # the cancel entry was acknowledged and deleted (on its own master)


async def test_dead_letters(
    redis_cluster: RedisCluster, cluster_redis: AsyncRedisCluster, prefix: str
) -> None:
    keys = Keys(prefix)
    named = job_id_where("bad", apart(redis_cluster, keys, keys.requests, keys.dead))
    gen = ScriptedGenerator()
    async with Harness(redis_cluster, prefix, gen):
        garbage = await submit(cluster_redis, keys, {"request": "not json"})
        invalid = await submit(cluster_redis, keys, json.dumps({"process_id": "nope", "job_id": named}))
        await cluster_redis.xadd(keys.cancels, {"nothing": "here"})
        answer = await JobReader(cluster_redis, keys, named).terminal()
        assert answer.state == JobState.FAILED and answer.error_code == ErrorCode.INVALID_REQUEST
        assert answer.request_id == invalid

        async def three() -> bool:
            return int(await cluster_redis.xlen(keys.dead)) == 3

        await wait_until(three, what="three dead letters")
        dead: Any = await cluster_redis.xrange(keys.dead)
        # Entry ids of different streams may be equal (same millisecond on another master).
        by_entry = {d[b"entry_id"].decode(): d for _, d in dead if b"orig:request" in d}
        assert by_entry[garbage][b"orig:request"] == b"not json"
        assert by_entry[invalid][b"error_code"] == b"invalid_request"
        assert any(b"invalid cancel" in d[b"reason"] for _, d in dead)
        await wait_until(lambda: _is(pending(cluster_redis, keys), 0), what="all acknowledged")
        assert await cluster_redis.xlen(keys.cancels) == 0
        assert gen.calls == 0


async def test_client_follows_50_jobs_on_every_master(redis_cluster: RedisCluster, prefix: str) -> None:
    keys = Keys(prefix)
    gen = ScriptedGenerator(chunks=3, chunk_size=2048)
    requests = [
        TraceRequest(process_id=str(uuid.UUID(int=i + 1)), job_id=f"fifty-{i}", labels={"n": str(i)})
        for i in range(50)
    ]
    masters = {redis_cluster.node_of(keys.job(r.job_id or "")).port for r in requests}
    assert masters == set(redis_cluster.ports)  # the jobs' keys spread over all three masters
    async with (
        Harness(redis_cluster, prefix, gen, worker_concurrency=8),
        TraceClient(
            redis_cluster.url, prefix, cluster=True, reconnect_timeout_s=30, max_connections=8
        ) as client,
    ):
        handles = await asyncio.gather(*(client.submit(r) for r in requests))
        sinks = [io.BytesIO() for _ in requests]
        progress: list[int] = [0] * len(requests)

        def counter(i: int) -> Callable[[Any], None]:
            def seen(event: Any) -> None:
                progress[i] += event.type == "progress"

            return seen

        statuses = await asyncio.gather(
            *(
                h.download(s, timeout=180, on_event=counter(i))
                for i, (h, s) in enumerate(zip(handles, sinks, strict=True))
            )
        )
        for request, sink, status in zip(requests, sinks, statuses, strict=True):
            assert status.state == JobState.SUCCEEDED and status.labels == request.labels
            assert sink.getvalue() == gen.expected(request)
            assert status.sha256 == hashlib.sha256(sink.getvalue()).hexdigest()
        assert all(progress), "every follower saw its job's progress"
        assert client._mux._buffered == 0  # nothing left waiting for a follower
        nodes = [n for n in redis_cluster.nodes if n.proc is not None]
        assert len(nodes) == 3
        readers = await _connections_named(nodes, "trace-client-reader")
        # one reader connection per master (plus the one redis-py keeps to the node it read the slot
        # map from), never one per job
        assert 1 <= readers <= len(nodes) + 1


async def _connections_named(nodes: list[RedisServer], name: str) -> int:
    from redis.asyncio import Redis  # noqa: PLC0415

    total = 0
    for node in nodes:
        async with Redis(port=node.port) as r:
            total += sum(1 for c in await r.client_list() if c.get("name") == name)
    return total
