"""The shared reader with more followed streams than one XREAD takes: it must not block on a window
of idle streams while another stream has entries (a round blocks only when it covers every ready
stream). Found by bench/bench_cluster.py: on one server, a follower among 64 idle ones waited about
3 s per entry (1 s of XREAD BLOCK per idle window)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from contracts.client import TraceClient
from tests.support.redis_server import RedisServer


async def test_an_entry_is_not_held_back_by_windows_of_idle_streams(
    redis_server: RedisServer, redis: Redis
) -> None:
    # A budget of 4 MiB reads 2 streams per round: 12 idle followers make 6 windows without the
    # active one. Blocking on each for block_ms (60 s) would hold every entry back for minutes.
    async with TraceClient(redis_server.url, "t", block_ms=60_000, max_buffered_bytes=4 * 2**20) as client:
        reader = client._mux
        idle = [reader.subscribe(f"t:job:{{idle-{i}}}", "0") for i in range(12)]
        active = reader.subscribe("t:job:{active}", "0")
        try:
            for i in range(5):
                await redis.xadd("t:job:{active}", {"n": str(i)})
                async with asyncio.timeout(30):  # generous for a busy machine; far under 60 s
                    fields = await active.get()
                assert fields == {b"n": str(i).encode()}
            assert all(s.queue.empty() for s in idle)
        finally:
            for sub in [*idle, active]:
                reader.unsubscribe(sub)
