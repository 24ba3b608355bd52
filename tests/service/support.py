"""Helpers for service tests: a scripted trace generator, settings, and stream readers that wait
with XREAD BLOCK (never sleeps)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from contracts import Keys, StatusEvent, TraceRequest, parse_entry
from contracts.events import ChunkEvent, Event
from tests.support.wire import validate_entry
from worker.service.ports import ProgressLike, StopRequested
from worker.settings import Settings

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


@dataclass
class FakeProgress:
    phase: str
    spans: int
    bytes: int
    threads_done: int = 0
    threads_total: int = 1
    percent: float = 0.0


@dataclass
class ScriptedGenerator:
    """Yields ``chunks`` deterministic chunks per request; behaviour scripted per test.

    ``fail_first`` exceptions are raised, one per call, before any chunk; ``gate`` (if set) is
    awaited after the first chunk so a test can hold a job mid-way.
    """

    chunks: int = 3
    chunk_size: int = 1000
    fail_first: list[BaseException] = field(default_factory=list)
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0
    ping_error: Exception | None = None

    @staticmethod
    def payload(job_seed: str, n: int, size: int) -> list[bytes]:
        return [hashlib.sha256(f"{job_seed}/{i}".encode()).digest() * (size // 32) for i in range(n)]

    async def generate(
        self,
        request: TraceRequest,
        *,
        on_progress: Callable[[ProgressLike], None],
        should_stop: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[bytes]:
        self.calls += 1
        self.started.set()
        if self.fail_first:
            raise self.fail_first.pop(0)
        for i, chunk in enumerate(self.payload(request.process_id, self.chunks, self.chunk_size)):
            if await should_stop():
                raise StopRequested
            on_progress(FakeProgress("threads", spans=(i + 1) * 10, bytes=(i + 1) * len(chunk)))
            yield chunk
            if i == 0 and self.gate is not None:
                while not self.gate.is_set():
                    if await should_stop():
                        raise StopRequested
                    try:
                        async with asyncio.timeout(0.05):
                            await self.gate.wait()
                    except TimeoutError:
                        pass

    def expected(self, request: TraceRequest) -> bytes:
        return b"".join(self.payload(request.process_id, self.chunks, self.chunk_size))

    async def ping(self) -> None:
        if self.ping_error is not None:
            raise self.ping_error

    async def aclose(self) -> None:
        pass


def fast_settings(redis_url: str, **overrides: Any) -> Settings:
    """Short leases and backoffs so the suite stays quick."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": "t",
        "lease_s": 1.0,
        "heartbeat_s": 0.2,
        "reclaim_interval_s": 0.2,
        "retry_backoff_s": 0.05,
        "retry_backoff_max_s": 0.2,
        "drain_timeout_s": 5.0,
        "http_port": 0,
        "progress_interval_s": 0.01,
        "blob_url": "file://./unused",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


class JobReader:
    """Reads a job stream from 0 with XREAD BLOCK; keeps every entry seen."""

    def __init__(self, redis: Redis | RedisCluster, keys: Keys, job_id: str) -> None:
        self.redis = redis
        self.stream = keys.job(job_id)
        self.last = "0-0"
        self.events: list[Event] = []
        #: Entry ids of ``events``, in order.
        self.ids: list[str] = []

    async def read_until(self, pred: Callable[[Event], bool], within: float = 60.0) -> Event:
        for event in self.events:
            if pred(event):
                return event
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no matching entry on {self.stream} within {within}s; saw {self.summary()}"
                )
            block = int(min(left, 2.0) * 1000) + 1  # under the client's socket timeout
            reply: Any = await self.redis.xread({self.stream: self.last}, block=block, count=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self.last = entry_id.decode()
                    validate_entry("job_stream_entry", fields)  # every entry read is a published shape
                    event = parse_entry(fields)
                    self.events.append(event)
                    self.ids.append(self.last)
                    if pred(event):
                        return event

    async def terminal(self, within: float = 60.0) -> StatusEvent:
        event = await self.read_until(lambda e: isinstance(e, StatusEvent) and e.state.terminal, within)
        assert isinstance(event, StatusEvent)
        return event

    def statuses(self) -> list[StatusEvent]:
        return [e for e in self.events if isinstance(e, StatusEvent)]

    def trace_bytes(self, attempt: int) -> bytes:
        chunks = sorted((e for e in self.events if isinstance(e, ChunkEvent) and e.attempt == attempt),
                        key=lambda c: c.seq)  # fmt: skip
        offset = 0
        for c in chunks:
            assert c.offset == offset
            offset += len(c.data)
        if chunks:
            assert chunks[-1].last and not any(c.last for c in chunks[:-1])
        return b"".join(c.data for c in chunks)

    def summary(self) -> list[str]:
        return [f"{e.type}:{getattr(e, 'state', '')}:{e.attempt}" for e in self.events]


async def submit(
    redis: Redis | RedisCluster, keys: Keys, request: TraceRequest | str | bytes | dict[str, Any]
) -> str:
    """XADD a request entry; a TraceRequest is sent in its wire form, a dict as raw fields."""
    fields: Any
    if isinstance(request, TraceRequest):
        fields = {"request": request.to_json()}
    elif isinstance(request, dict):
        fields = request
    else:
        fields = {"request": request}
    entry: Any = await redis.xadd(keys.requests, fields)
    return str(entry.decode())


async def wait_until(
    pred: Callable[[], Awaitable[bool]], within: float = 60.0, what: str = "condition"
) -> None:
    """Poll a Redis-side condition that has no stream to block on (e.g. the group's pending list)."""
    deadline = time.monotonic() + within
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.02)


async def validate_redis(redis: Redis | RedisCluster, keys: Keys) -> int:
    """Validate every entry of the events and dead-letter streams, every job stream and every state
    hash under ``keys`` against the published wire schemas; returns how many were checked."""
    checked = 0
    for stream, name in (
        (keys.events, "status_entry"),
        (keys.dead, "dead_letter"),
        (keys.requests, "request_entry"),
    ):
        entries: Any = await redis.xrange(stream)
        for _, fields in entries:
            if name != "request_entry" or b"request" in fields:
                validate_entry(name, fields)
                checked += 1
    async for key in redis.scan_iter(match=f"{keys.prefix}:job:*"):
        kind: Any = await redis.type(key)
        if kind == b"stream":
            stream_entries: Any = await redis.xrange(key)
            for _, fields in stream_entries:
                validate_entry("job_stream_entry", fields)
                checked += 1
        elif key.endswith(b":state"):
            validate_entry("job_state_hash", await redis.hgetall(key))
            checked += 1
    return checked
