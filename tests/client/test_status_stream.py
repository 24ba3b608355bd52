"""A follower of events receives no chunk bytes (issue 20 item 5): the worker writes status and
progress entries to ``<prefix>:job:{id}:status`` too, and ``events()``/``wait()`` read that.
Measured with the server's own count of bytes sent to clients (INFO stats)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from contracts import JobState, TraceRequest, parse_entry
from contracts.client import TraceClient
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer


async def _sent(redis: aioredis.Redis) -> int:
    """Bytes the server has sent to all its clients so far."""
    info: Any = await redis.info("stats")
    return int(info["total_net_output_bytes"])


async def _all(redis: aioredis.Redis | RedisCluster, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of a stream, read in pages (a job stream holds the whole trace)."""
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    start = "-"
    while page := await redis.xrange(key, min=start, count=50):
        out += page  # type: ignore[arg-type]
        start = "(" + str(page[-1][0], "ascii")  # type: ignore[arg-type]
    return out


async def test_following_events_receives_no_chunk_bytes(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    worker = spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "b").as_uri()))
    request = TraceRequest(process_id=devserver.lake.processes[1].process_id, job_id="quiet")
    job = await client.submit(request)
    live = [event async for event in job.events(timeout=300)]  # while the job runs
    final = live[-1]
    assert final.type == "status" and final.state == JobState.SUCCEEDED and final.size
    assert any(e.type == "progress" for e in live)

    # The streams: the same status/progress entries in the same order, and no chunk on the status stream.
    keys = client.keys
    job_entries = await _all(client.redis, keys.job("quiet"))
    status_entries = await _all(client.redis, keys.status_stream("quiet"))
    no_chunks = [parse_entry(f) for _, f in job_entries if f[b"type"] != b"chunk"]
    assert [parse_entry(f) for _, f in status_entries] == no_chunks
    assert sum(len(f.get(b"data", b"")) for _, f in job_entries) == final.size
    assert await client.redis.ttl(keys.status_stream("quiet")) > 0  # expires with the job

    # Bytes on the wire, the worker stopped so only this test talks to Redis.
    worker.terminate()
    worker.wait(60)
    async with aioredis.Redis.from_url(redis_server.url) as probe:
        before = await _sent(probe)
        replay = [event async for event in client.job("quiet").events(timeout=60)]
        status = await client.job("quiet").wait(60)
        events_bytes = await _sent(probe) - before
        assert replay == live and status == final

        before = await _sent(probe)
        await client.job("quiet").download(tmp_path / "q.pftrace", timeout=120)
        download_bytes = await _sent(probe) - before
    assert download_bytes > final.size  # the measure sees chunk bytes when there are some
    # events and wait: a few passes over the status stream (finding where the run starts, then
    # reading it; plus RESP framing), and no chunk.
    entry_bytes = sum(len(k) + len(v) for _, f in status_entries for k, v in f.items())
    print(f"trace {final.size} B; status stream {entry_bytes} B; events+wait {events_bytes} B")
    assert events_bytes < 20 * entry_bytes < final.size // 10
