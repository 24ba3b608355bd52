"""An attempt that fails while a chunk is being written leaves no chunk entry it cannot remove
(issue 10 item 5, trace_too_large): the XADD Redis has done but whose reply has not come back yet is
let finish, so its entry id is among the reply stream's ``chunk_ids``, which the terminal status
deletes. A real redis-server behind a proxy that holds Redis's replies makes "in flight" exact."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from contracts import Keys
from tests.service.support import wait_until
from tests.support.chaos import ChaosProxy
from tests.support.redis_server import RedisServer
from worker.service.emit import Emitter
from worker.sinks.blob.local import LocalBlobStore
from worker.sinks.reply_stream import ReplyStream

KEYS = Keys("t")


async def test_abort_lets_a_chunk_write_in_flight_finish(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    writer = await store.open_writer("p/in-flight.pftrace")
    with ChaosProxy(("127.0.0.1", redis_server.port)) as proxy:
        worker_redis = Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        try:
            reply = ReplyStream(worker_redis, KEYS, "in-flight", attempt=1)
            emitter = Emitter(writer, reply, chunks=True)
            await worker_redis.ping()  # connected (the handshake needs replies) before muting
            proxy.set_mode("mute")  # Redis does the XADD; its reply is held
            await emitter.put(b"x" * 1_000_000, last=False)

            async def landed() -> bool:
                return int(await redis.xlen(KEYS.job("in-flight"))) == 1

            await wait_until(landed, what="chunk entry in Redis")
            # The attempt fails now (the generator raised): the reply comes back only after abort
            # began, as when the failure and the XADD overlap.
            asyncio.get_running_loop().call_soon(proxy.set_mode, "pass")
            await emitter.abort()
            entries: Any = await redis.xrange(KEYS.job("in-flight"))
            assert [entry_id for entry_id, _ in entries] == reply.chunk_ids
        finally:
            await worker_redis.aclose()
            await writer.abort()


async def test_abort_drops_queued_chunks(redis_server: RedisServer, redis: Redis, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    writer = await store.open_writer("p/queued.pftrace")
    with ChaosProxy(("127.0.0.1", redis_server.port)) as proxy:
        worker_redis = Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        try:
            reply = ReplyStream(worker_redis, KEYS, "queued", attempt=1)
            emitter = Emitter(writer, reply, chunks=True, depth=4)
            await worker_redis.ping()  # connected (the handshake needs replies) before muting
            proxy.set_mode("mute")
            for _ in range(3):  # the first is in flight, two wait in the queue
                await emitter.put(b"y" * 1000, last=False)

            async def landed() -> bool:
                return int(await redis.xlen(KEYS.job("queued"))) >= 1

            await wait_until(landed, what="first chunk entry in Redis")
            asyncio.get_running_loop().call_soon(proxy.set_mode, "pass")
            await emitter.abort()
            entries: Any = await redis.xrange(KEYS.job("queued"))
            assert len(entries) == 1 and [entry_id for entry_id, _ in entries] == reply.chunk_ids
        finally:
            await worker_redis.aclose()
            await writer.abort()
