"""What one request costs: Redis memory and blob disk per kind of request (docs/SECURITY.md).

A private redis-server, the devserver (a ``typical`` process: ~100k thread spans) and the worker
service in this process, with a local blob folder. For each kind, ``--n`` requests are sent one
kind at a time; once all are answered, the growth of the keys' ``MEMORY USAGE`` and of the blob
folder is divided by ``--n``. What remains is what stays until ``chunk_ttl_s`` (job streams, with
the chunks), ``job_ttl_s`` (status streams and state hashes), ``events_maxlen`` / ``dead_maxlen``
(events and dead letters) or for ever (blobs). Last, the keys of one chunks-on job are measured
again once its job stream has expired (``--chunk-ttl-s``, default 60 s here).

    .venv/bin/python -m bench.cost_per_request [--n 10] [--chunk-ttl-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from contracts import Keys, TraceRequest
from tests.support.devserver import small_lake
from tests.support.redis_server import RedisServer
from worker.devserver import DevServer
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.settings import Settings
from worker.sinks.blob import blob_store_from_settings

KEYS = Keys("cost")


async def _used(redis: Redis) -> int:
    """Bytes held by every key (MEMORY USAGE, all stream nodes sampled): steadier than used_memory."""
    total = 0
    async for key in redis.scan_iter(count=1000):
        usage: Any = await redis.memory_usage(key, samples=0)
        total += int(usage or 0)
    return total


def _disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def _answered(redis: Redis) -> None:
    """Until the request stream is empty and nothing is pending (every entry answered)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        summary: Any = await redis.xpending(KEYS.requests, KEYS.group)
        if int(summary["pending"]) == 0 and await redis.xlen(KEYS.requests) == 0:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("requests not answered within 600 s")


async def _measure(
    redis: Redis, blobs: Path, n: int, entry: Callable[[int], dict[str, Any]]
) -> tuple[float, float]:
    before, disk = await _used(redis), _disk(blobs)
    for i in range(n):
        fields: Any = entry(i)
        await redis.xadd(KEYS.requests, fields)
        await _answered(redis)
    return (await _used(redis) - before) / n, (_disk(blobs) - disk) / n


async def _job_keys(redis: Redis, job_id: str) -> int:
    """Bytes held by one job's keys (job stream, status stream, state hash)."""
    total = 0
    for key in (KEYS.job(job_id), KEYS.status_stream(job_id), KEYS.state(job_id)):
        usage: Any = await redis.memory_usage(key, samples=0)
        total += int(usage or 0)
    return total


async def _job_keys_each(redis: Redis, n: int) -> float:
    """Mean bytes of the chunks-on jobs' keys."""
    return sum([await _job_keys(redis, f"on-{i}") for i in range(n)]) / n


async def _after_chunk_ttl(redis: Redis, n: int) -> float:
    """Mean bytes of the chunks-on jobs' keys once their job streams (the chunks) expired."""
    jobs = [f"on-{i}" for i in range(n)]
    deadline = time.monotonic() + 600
    while any([await redis.exists(KEYS.job(j)) for j in jobs]):
        if time.monotonic() > deadline:
            raise TimeoutError("job streams did not expire within 600 s")
        await asyncio.sleep(0.2)
    return await _job_keys_each(redis, n)


async def main(n: int, chunk_ttl_s: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="tw-cost-"))
    redis_server = RedisServer().start()
    try:
        with DevServer(small_lake(processes=("typical",))).start() as dev:
            pid = dev.lake.processes[0].process_id
            settings = Settings(
                _env_file=None,
                redis_url=redis_server.url,
                key_prefix="cost",
                flightsql_url=dev.url,
                blob_url=f"file://{root}",
                http_host="",
                chunk_ttl_s=chunk_ttl_s,
            )
            service = Service(
                settings, generator=PipelineGenerator(settings), store=blob_store_from_settings(settings)
            )
            redis = Redis.from_url(redis_server.url)
            await service.start()
            try:
                big = json.dumps(
                    {"process_id": pid, "labels": {"k": "x" * 200}, "pad": "y" * (16 * 1024 - 300)}
                )
                kinds: dict[str, Callable[[int], dict[str, Any]]] = {
                    "valid, chunks on": lambda i: {
                        "request": TraceRequest(process_id=pid, job_id=f"on-{i}").to_json()
                    },
                    "valid, chunks off (blob only)": lambda i: {
                        "request": TraceRequest(process_id=pid, job_id=f"off-{i}", chunks=False).to_json()
                    },
                    "duplicate of a succeeded job": lambda i: {
                        "request": TraceRequest(process_id=pid, job_id="on-0").to_json()
                    },
                    "invalid, 16 KiB request field": lambda i: {"request": big},
                    "malformed, 4 MiB extra field": lambda i: {
                        "request": "{}",
                        "x": b"z" * (4 * 1024 * 1024),
                    },
                }
                print(f"{'kind':<34} {'redis B/request':>16} {'blob B/request':>15}")
                live = 0.0
                for name, entry in kinds.items():
                    mem, disk = await _measure(redis, root, n, entry)
                    print(f"{name:<34} {mem:>16,.0f} {disk:>15,.0f}")
                    if name == "valid, chunks on":
                        live = await _job_keys_each(redis, n)
                kept = await _after_chunk_ttl(redis, n)
                print(f"one chunks-on job's keys: {live:,.0f} B live, {kept:,.0f} B after chunk_ttl_s")
            finally:
                await service.stop()
                await redis.aclose()
    finally:
        redis_server.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="requests per kind (default 10)")
    parser.add_argument("--chunk-ttl-s", type=int, default=60, help="the worker's chunk_ttl_s (default 60)")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.chunk_ttl_s))
