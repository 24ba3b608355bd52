"""What recording chunk ids costs per chunk: a plain ``XADD`` of a chunk entry (how chunks were
written before) against :class:`~worker.sinks.reply_stream.ReplyStream`'s script (lock check, XADD,
APPEND of ``<attempt> <id>;`` to the job's chunk ids), one chunk per round trip as the worker writes.

Starts its own redis-server; reports, per chunk size, the CPU time of redis-server (``INFO cpu``
deltas: user + sys) and of this client process per chunk, best of ``--rounds`` interleaved rounds
(A, B, A, B, ...) on job streams that start with a status entry as real ones do, and the job's
end (:func:`~worker.sinks.reply_stream.queue_drop_chunks` of every chunk of a failed job) per chunk.

    .venv/bin/python -m bench.bench_chunk_write
    .venv/bin/python -m bench.bench_chunk_write --sizes 65536,1044480 --chunks 200 --rounds 5

Write the machine's load (``uptime``) beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from contracts.events import ChunkEvent
from contracts.keys import Keys
from tests.support.redis_server import RedisServer
from worker.sinks.reply_stream import ReplyStream, queue_drop_chunks

KEYS = Keys("bench")
LOCK = "bench/1-0/1"


async def _server_cpu(redis: Redis) -> float:
    info: Any = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _plain(redis: Redis, job_id: str, data: bytes, chunks: int) -> None:
    offset = 0
    for seq in range(chunks):
        event = ChunkEvent(job_id=job_id, attempt=1, seq=seq, offset=offset, data=data, last=False)
        fields: Any = event.to_fields()
        await redis.xadd(KEYS.job(job_id), fields)
        offset += len(data)


async def _recorded(redis: Redis, job_id: str, data: bytes, chunks: int) -> None:
    await redis.set(KEYS.lock(job_id), LOCK)
    reply = ReplyStream(redis, KEYS, job_id, attempt=1, lock_value=LOCK)
    for _ in range(chunks):
        await reply.chunk(data, last=False)


async def _measure(redis: Redis, run: Any, job_id: str, data: bytes, chunks: int) -> tuple[float, float]:
    # A job stream starts with a status entry (the pickup's answer), never with a chunk.
    first = {"job_id": job_id, "attempt": "0", "type": "status", "state": "queued"}
    await redis.xadd(KEYS.job(job_id), first)  # type: ignore[arg-type]
    server0, client0 = await _server_cpu(redis), time.process_time()
    await run(redis, job_id, data, chunks)
    server, client = await _server_cpu(redis) - server0, time.process_time() - client0
    return server / chunks * 1e6, client / chunks * 1e6


async def main(sizes: list[int], chunks: int, rounds: int) -> None:
    server = RedisServer().start()
    redis = Redis.from_url(server.url)
    if True:
        try:
            print(f"{'chunk bytes':>12} {'path':>9} {'redis us/chunk':>15} {'client us/chunk':>16}")
            for size in sizes:
                data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
                best: dict[str, tuple[float, float]] = {}
                for r in range(rounds):
                    for name, run in (("xadd", _plain), ("recorded", _recorded)):
                        job_id = f"{name}-{size}-{r}"
                        got = await _measure(redis, run, job_id, data, chunks)
                        old = best.get(name)
                        best[name] = got if old is None else (min(old[0], got[0]), min(old[1], got[1]))
                        await redis.delete(KEYS.job(job_id), KEYS.chunk_ids(job_id), KEYS.lock(job_id))
                for name, (srv, cli) in best.items():
                    print(f"{size:>12} {name:>9} {srv:>15.1f} {cli:>16.1f}")
            # The end of a failed job: every recorded chunk XDELed (ids only).
            job_id = "drop"
            await _recorded(redis, job_id, b"y" * 1024, chunks * 10)
            server0 = await _server_cpu(redis)
            async with redis.pipeline(transaction=True) as pipe:
                queue_drop_chunks(pipe, KEYS, job_id, None)
                await pipe.execute()
            spent = (await _server_cpu(redis) - server0) / (chunks * 10) * 1e6
            print(f"job end (drop {chunks * 10} chunks): redis {spent:.2f} us/chunk")
        finally:
            await redis.aclose()
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="65536,1044480", help="chunk sizes in bytes, comma-separated")
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.chunks, args.rounds))
