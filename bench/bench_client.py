"""Client fan-in benchmark: one TraceClient following many jobs at once through its single reader.

Fills a private redis-server with N finished jobs (status running, chunks, status succeeded: the
wire contract, written with a raw pipeline), then downloads all of them concurrently from one
client into counting sinks, verifying each sha256. Reports jobs/s, MiB/s, the client's Redis
connections and its peak RSS growth (bounded: a follower buffers at most 8 entries).

    .venv/bin/python -m bench.bench_client [--jobs 500] [--chunks 8] [--chunk-kib 256] [--cluster]

``--cluster`` does the same on a private three-master Redis Cluster (tests/support/redis_cluster.py)
with ``TraceClient(cluster=True)``: the jobs spread over the masters by their hash slots.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as RedisClusterClient

from bench.bench_blob import PeakRss
from contracts import ChunkEvent, JobState, Keys, StatusEvent
from contracts.client import TraceClient
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer


class Counting:
    """A writable that keeps nothing (the benchmark measures the client, not a disk)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


async def fill(url: str, keys: Keys, jobs: int, chunks: int, chunk: bytes, *, cluster: bool) -> str:
    redis: Any = RedisClusterClient.from_url(url) if cluster else aioredis.Redis.from_url(url)
    digest = hashlib.sha256(chunk * chunks).hexdigest()
    for j in range(jobs):
        job_id = f"b{j}"
        pipe = redis.pipeline(transaction=False)
        fields: Any = StatusEvent(job_id=job_id, state=JobState.RUNNING, attempt=1).to_fields()
        pipe.xadd(keys.job(job_id), fields)
        for seq in range(chunks):
            entry = ChunkEvent(
                job_id=job_id, attempt=1, seq=seq, offset=seq * len(chunk), data=chunk, last=seq == chunks - 1
            )
            pipe.xadd(keys.job(job_id), entry.to_fields())
        done: Any = StatusEvent(
            job_id=job_id, state=JobState.SUCCEEDED, attempt=1, size=len(chunk) * chunks, sha256=digest
        ).to_fields()
        pipe.xadd(keys.job(job_id), done)
        await pipe.execute()
    await redis.aclose()
    return digest


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument(
        "--cluster", action="store_true", help="a three-master Redis Cluster instead of one server"
    )
    args = parser.parse_args()
    server = RedisCluster().start() if args.cluster else RedisServer().start()
    ports = server.ports if isinstance(server, RedisCluster) else [server.port]
    try:
        keys = Keys("bench")
        chunk = os.urandom(args.chunk_kib * 1024)
        await fill(server.url, keys, args.jobs, args.chunks, chunk, cluster=args.cluster)
        total_mib = args.jobs * args.chunks * len(chunk) / 2**20
        async with TraceClient(server.url, "bench", cluster=args.cluster) as client:
            sinks = [Counting() for _ in range(args.jobs)]
            with PeakRss() as mem:
                started = time.perf_counter()
                await asyncio.gather(*(client.job(f"b{j}").download(sinks[j]) for j in range(args.jobs)))
                elapsed = time.perf_counter() - started
            names = []
            for port in ports:  # every node's connections
                async with aioredis.Redis(port=port) as node:
                    names += [c.get("name") for c in await node.client_list()]
        assert all(s.size == args.chunks * len(chunk) for s in sinks)
        print(
            f"{'3-master cluster' if args.cluster else 'one server'}, load {os.getloadavg()[0]:.1f}: "
            f"{args.jobs} jobs x {args.chunks} chunks x {args.chunk_kib} KiB = {total_mib:.0f} MiB "
            f"in {elapsed:.2f} s: {args.jobs / elapsed:.0f} jobs/s, {total_mib / elapsed:.0f} MiB/s; "
            f"connections: {names.count('trace-client')} pool + {names.count('trace-client-reader')} reader; "
            f"peak RSS growth {mem.growth_mib:.0f} MiB"
        )
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
