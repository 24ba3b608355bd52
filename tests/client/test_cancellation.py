"""A cancelled task stops: no await inside the client (or the worker's Redis client) may swallow the
cancellation, whatever loop iteration it lands in.

Python 3.11's ``asyncio.wait_for`` drops a cancellation that lands while the awaited operation
completes (cpython#86296), and redis-py sends every command through it; a cancelled download then
ran on to the end of the trace (``trace-worker demo`` wrote the whole file after Ctrl-C). Each test
cancels the same operation after 0, 1, 2, ... loop iterations (``sleep(0)`` steps the loop, it does
not wait for time) until the operation ends before the cancel, so every await it makes is hit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from contracts import JobState, TraceRequest
from contracts.client import TraceClient
from tests.client.scripted import PID, ScriptedWorker
from tests.support.redis_server import RedisServer
from worker.service.app import redis_client
from worker.service.redis_io import RedisLike
from worker.settings import Settings

#: Longest a cancelled task may take to end (generous: the machine may be busy).
STOP_S = 30.0


async def cancel_at_every_turn(
    start: Callable[[int], Coroutine[Any, Any, object]],
    after: Callable[[int], Awaitable[None]] | None = None,
    max_turns: int = 400,
    prepare: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Run ``start(n)`` in a task and cancel it after ``n`` loop iterations, for n = 0, 1, ... until
    it ends before the cancel. Every cancelled run must end with CancelledError within
    :data:`STOP_S`; ``prepare(n)`` runs before each run, ``after(n)`` checks what a cancelled run
    left. Returns how many runs were cancelled."""
    for n in range(max_turns):
        if prepare is not None:
            await prepare(n)
        task = asyncio.ensure_future(start(n))
        for _ in range(n):
            await asyncio.sleep(0)  # one loop iteration
        if task.done():
            await task
            return n
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_S)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise AssertionError(f"cancelled after {n} loop iterations, still running {STOP_S:g} s later")
        if not task.cancelled():
            raise AssertionError(f"cancelled after {n} loop iterations, it went on: {task.result()!r}")
        if after is not None:
            await after(n)
    raise AssertionError(f"still not done after {max_turns} loop iterations")


async def test_a_cancelled_command_raises_and_leaves_the_connection_usable(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, redis_url=redis_server.url)
    worker_redis = redis_client(settings)
    async with TraceClient(redis_server.url, "t") as client:
        try:
            for redis in (client.redis, worker_redis):
                await redis.set("k", "v")

                async def command(_n: int, redis: RedisLike = redis) -> object:
                    async with redis.pipeline(transaction=False) as pipe:
                        pipe.hset("h", "f", "x")
                        pipe.get("k")
                        return await pipe.execute()

                async def replies_match(_n: int, redis: RedisLike = redis) -> None:
                    # A connection whose reply was left unread would answer the next command with it.
                    assert await redis.get("k") == b"v"
                    assert await redis.hgetall("h") in ({}, {b"f": b"x"})

                assert await cancel_at_every_turn(command, replies_match) >= 3
        finally:
            await worker_redis.aclose()


async def test_a_cancelled_download_raises_and_claims_nothing(
    client: TraceClient, worker: ScriptedWorker, tmp_path: Path
) -> None:
    data = b"trace bytes " * 2000
    await worker.whole_job("done", data)
    # Half a job too: a download of it never ends by itself, so a swallowed cancel hangs.
    await worker.status("half", JobState.QUEUED, 0)
    await worker.status("half", JobState.RUNNING, 1)
    await worker.chunks("half", data[:5000], 1, 1000, last=False)

    for job_id in ("done", "half"):

        async def download(n: int, job_id: str = job_id) -> object:
            return await client.job(job_id).download(tmp_path / f"{job_id}-{n}.pftrace")

        async def nothing_left(n: int, job_id: str = job_id) -> None:
            target = tmp_path / f"{job_id}-{n}.pftrace"
            assert not target.exists() and not target.with_name(target.name + ".part").exists()

        if job_id == "done":
            assert await cancel_at_every_turn(download, nothing_left) >= 3
        else:
            # Never ends: cancel it at each of its first 100 iterations (it is past its start-up
            # reads and waiting on the stream long before that).
            async def bounded(n: int) -> object:
                if n >= 100:
                    return None
                return await download(n)

            assert await cancel_at_every_turn(bounded, nothing_left) == 100


async def test_a_cancelled_submit_and_download_of_a_new_job_claims_nothing(
    client: TraceClient, worker: ScriptedWorker, tmp_path: Path
) -> None:
    """The demo's sequence: submit, then download; Ctrl-C at any point stops it."""

    async def request(n: int) -> object:
        job = await client.submit(TraceRequest(process_id=PID, job_id=f"new-{n}"))
        return await job.download(tmp_path / f"new-{n}.pftrace")

    async def nothing_left(n: int) -> None:
        assert not (tmp_path / f"new-{n}.pftrace").exists()
        assert not (tmp_path / f"new-{n}.pftrace.part").exists()

    async def bounded(n: int) -> object:
        return None if n >= 100 else await request(n)

    assert await cancel_at_every_turn(bounded, nothing_left) == 100


async def test_closing_a_client_does_not_swallow_the_callers_cancellation(
    redis_server: RedisServer, redis: aioredis.Redis
) -> None:
    """The client's close stops its shared stream reader; a cancellation of the task closing it
    (e.g. the demo's Ctrl-C while it leaves its client) still ends that task."""
    await redis.hset("t:job:{j}:state", mapping={"state": "running", "attempt": "1"})
    runs: list[tuple[TraceClient, AsyncGenerator[object, None], asyncio.Future[object]]] = []

    async def follow_one(_n: int) -> None:
        client = TraceClient(redis_server.url, "t", client_name=f"closing-{len(runs)}")
        events = client.job("j").events()
        runs.append((client, events, asyncio.ensure_future(anext(events))))
        async with asyncio.timeout(STOP_S):  # the shared reader is blocked in XREAD on the job stream
            while not await reading(f"closing-{len(runs) - 1}-reader"):  # noqa: ASYNC110 - Redis state
                await asyncio.sleep(0.01)

    async def reading(name: str) -> bool:
        return any(c.get("name") == name and c.get("cmd") == "xread" for c in await redis.client_list())

    async def close(_n: int) -> object:
        await runs[-1][0].aclose()
        return "closed"

    try:
        assert await cancel_at_every_turn(close, prepare=follow_one) >= 2
    finally:
        for client, events, pending in runs:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
            await events.aclose()
            await client.aclose()
