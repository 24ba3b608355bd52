"""The record of chunk entry ids that lets a job's end delete the chunks of attempts that did not
succeed (whichever worker wrote them) without reading them: each chunk's script appends its id, the
end XDELs the other attempts' ids in batches, and a chunk is written only under the attempt's lease.
The crash path (a worker SIGKILLed mid-job) is in test_resilience.py."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from contracts import ChunkEvent, Keys, parse_entry
from tests.support.redis_server import RedisServer
from worker.sinks.reply_stream import LeaseLost, ReplyStream, queue_drop_chunks

KEYS = Keys("t")


async def _chunks(redis: Redis, job_id: str) -> list[ChunkEvent]:
    entries: Any = await redis.xrange(KEYS.job(job_id))
    return [e for e in (parse_entry(f) for _, f in entries) if isinstance(e, ChunkEvent)]


async def _drop(redis: Redis, job_id: str, keep: int | None) -> int:
    async with redis.pipeline(transaction=True) as pipe:
        queue_drop_chunks(pipe, KEYS, job_id, keep)
        (dropped,) = await pipe.execute()
    return int(dropped)


async def test_end_keeps_only_the_succeeded_attempt(redis_server: RedisServer, redis: Redis) -> None:
    # More ids than one XDEL batch (1000), attempts interleaved on the stream.
    one = ReplyStream(redis, KEYS, "many", attempt=1)
    two = ReplyStream(redis, KEYS, "many", attempt=2)
    three = ReplyStream(redis, KEYS, "many", attempt=3)
    for i in range(2300):
        await one.chunk(b"a%d" % i, last=False)
        if i % 500 == 0:
            await two.chunk(b"b", last=False)
    await three.chunk(b"c", last=True)
    assert await _drop(redis, "many", keep=2) == 2300 + 1
    left = await _chunks(redis, "many")
    assert [(c.attempt, c.seq) for c in left] == [(2, i) for i in range(5)]
    assert not await redis.exists(KEYS.chunk_ids("many"))


async def test_end_without_success_drops_every_chunk(redis_server: RedisServer, redis: Redis) -> None:
    for attempt in (1, 2):
        reply = ReplyStream(redis, KEYS, "failed", attempt=attempt)
        for _ in range(3):
            await reply.chunk(b"x" * 100, last=False)
    assert await _drop(redis, "failed", keep=None) == 6
    assert await _chunks(redis, "failed") == []
    assert await _drop(redis, "nothing", keep=None) == 0  # a job that wrote no chunk


async def test_chunk_is_written_only_under_its_lease(redis_server: RedisServer, redis: Redis) -> None:
    await redis.set(KEYS.lock("fenced"), "w/1-0/1")
    mine = ReplyStream(redis, KEYS, "fenced", attempt=1, lock_value="w/1-0/1")
    await mine.chunk(b"ok", last=False)
    await redis.set(KEYS.lock("fenced"), "other/2-0/2")  # another worker took the job over
    with pytest.raises(LeaseLost):
        await mine.chunk(b"late", last=False)
    left = await _chunks(redis, "fenced")
    assert [c.data for c in left] == [b"ok"]
    ids: Any = await redis.get(KEYS.chunk_ids("fenced"))
    (entry_id,) = mine.chunk_ids
    assert isinstance(entry_id, bytes) and ids == b"1 " + entry_id + b";"


async def test_refused_chunk_leaves_no_key(redis_server: RedisServer, redis: Redis) -> None:
    # A worker still writing after its job ended and its streams expired: nothing is left behind.
    late = ReplyStream(redis, KEYS, "gone", attempt=1, lock_value="w/1-0/1")
    with pytest.raises(LeaseLost):
        await late.chunk(b"late", last=False)
    assert not await redis.exists(KEYS.job("gone"), KEYS.chunk_ids("gone"))
