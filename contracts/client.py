"""Async client for trace-worker: submit a request, follow its job, receive the trace.

Imports redis, pydantic and the stdlib only (never ``worker``), so a gateway or a bot can use it
without the worker's dependencies. One :class:`TraceClient` serves any number of jobs over one
connection pool plus one reader connection: a shared reader multiplexes ``XREAD BLOCK`` over every
job stream someone is following, so hundreds of jobs need no thread or connection each.

Example:
    >>> async def export(pid: str) -> None:  # doctest: +SKIP
    ...     async with TraceClient("redis://127.0.0.1:6379/0") as client:
    ...         job = await client.submit(TraceRequest(process_id=pid))
    ...         async for event in job.events():
    ...             print(event.type, getattr(event, "percent", event.model_dump().get("state")))
    ...         status = await job.download("trace.pftrace")
    ...         print(status.size, status.sha256)

See docs/CLIENT.md for the whole API and :mod:`contracts.sync_client` for the blocking wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contracts._download import TraceSink, Writable, fetch_url
from contracts._reader import StreamReader
from contracts.client_errors import ClientError, ConnectionLost, JobFailed, TraceIntegrityError
from contracts.events import ChunkEvent, Event, ProgressEvent, StatusEvent, parse_entry
from contracts.keys import DEFAULT_PREFIX, Keys
from contracts.request import MAX_REQUEST_BYTES, TraceRequest
from contracts.states import JobState

__all__ = [
    "ClientError",
    "ConnectionLost",
    "JobFailed",
    "JobHandle",
    "TraceClient",
    "TraceIntegrityError",
]

#: States after which a resubmitted request starts a new run on the same job stream.
_RERUN_STATES = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.DEAD})

EventCallback = Callable[[StatusEvent | ProgressEvent], object]


class TraceClient:
    """Talks to the workers through Redis only (the wire contract in docs/PROTOCOL.md).

    Args:
        redis_url: ``redis://`` or ``rediss://`` URL (password in the URL).
        prefix: key prefix of the deployment (``TRACE_WORKER_KEY_PREFIX``).
        max_connections: size of the command connection pool (the reader has its own connection).
        reconnect_timeout_s: how long the reader keeps retrying an unreachable Redis before every
            follower gets :class:`ConnectionLost`.
        block_ms: longest single ``XREAD BLOCK`` (new followers interrupt it with CLIENT UNBLOCK).
        cancel_ttl_s: lifetime of a cancel key.
        client_name: CLIENT SETNAME of the connections (the reader's gets ``-reader`` appended),
            so an operator can tell them apart in CLIENT LIST.
        max_buffered_bytes: most bytes of received entries waiting for their followers, all jobs
            together (bounds the client's memory whatever the number of jobs).
    """

    def __init__(
        self,
        redis_url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        max_connections: int = 16,
        reconnect_timeout_s: float = 60.0,
        block_ms: int = 1000,
        cancel_ttl_s: int = 24 * 3600,
        client_name: str = "trace-client",
        max_buffered_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.keys = Keys(prefix)
        self.redis_url = redis_url
        self.cancel_ttl_s = cancel_ttl_s
        self.client_name = client_name
        pool: aioredis.BlockingConnectionPool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=max_connections, timeout=reconnect_timeout_s, client_name=client_name
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._mux = StreamReader(
            redis_url=redis_url,
            client_name=client_name,
            commands=self.redis,
            block_ms=block_ms,
            reconnect_timeout_s=reconnect_timeout_s,
            max_buffered_bytes=max(max_buffered_bytes, 4 * 1024 * 1024),
        )

    async def __aenter__(self) -> TraceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the reader and close every connection."""
        await self._mux.aclose()
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()

    async def ping(self) -> None:
        """Raise :class:`ClientError` unless Redis answers."""
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise ClientError(f"cannot reach Redis at {_safe_url(self.redis_url)}: {exc}") from exc

    async def submit(self, request: TraceRequest) -> JobHandle:
        """Send the request (XADD on the request stream) and return its job at once.

        Resubmitting a request whose job failed, was cancelled or went dead starts a new run; the
        handle then follows only that run. A request for a running or finished job starts no work
        (the worker tells the job's state on its stream); the handle follows the existing job.

        Raises:
            ValueError: the request is larger than the contract allows.
            ClientError: Redis unreachable.
        """
        job_id = request.effective_job_id()
        raw = request.to_json()
        if len(raw.encode()) > MAX_REQUEST_BYTES:
            raise ValueError(f"request is larger than {MAX_REQUEST_BYTES} bytes")
        try:
            start = await self._start_id(job_id)
            await self.redis.xadd(self.keys.requests, {"request": raw})
        except (RedisError, OSError) as exc:
            raise ClientError(f"cannot submit to Redis at {_safe_url(self.redis_url)}: {exc}") from exc
        return JobHandle(self, job_id, start_id=start, request=request)

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job, following its stream from the beginning."""
        return JobHandle(self, job_id, start_id="0")

    async def recent_jobs(self, count: int = 20) -> list[StatusEvent]:
        """Latest status of the most recently active jobs (from the events stream), newest first."""
        latest: dict[str, StatusEvent] = {}
        last = "+"
        while len(latest) < count:
            page = await self.redis.xrevrange(self.keys.events, max=last, min="-", count=max(count * 4, 100))
            if not page:
                break
            for _entry_id, fields in page:
                with contextlib.suppress(ValueError):
                    event = parse_entry(fields or {})
                    if isinstance(event, StatusEvent) and event.job_id not in latest:
                        latest[event.job_id] = event
            last = "(" + _text(page[-1][0])
        return list(latest.values())[:count]

    async def _start_id(self, job_id: str) -> str:
        state = await self.redis.hget(self.keys.state(job_id), "state")
        if state is not None and _text(state) in _RERUN_STATES:
            newest = await self.redis.xrevrange(self.keys.job(job_id), count=1)
            if newest:
                return _text(newest[0][0])
        return "0"


class JobHandle:
    """One job: follow it, receive its trace, cancel it. Cheap; create as many as needed."""

    def __init__(
        self, client: TraceClient, job_id: str, *, start_id: str = "0", request: TraceRequest | None = None
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.request = request
        self._start_id = start_id

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    async def events(self) -> AsyncGenerator[StatusEvent | ProgressEvent, None]:
        """Status and progress events from the job's start, ending with its terminal status.

        Survives Redis reconnects (resumes after the last entry seen) and drops entries of
        abandoned attempts (anything older than the newest ``status running``).
        """
        async with contextlib.aclosing(self._follow()) as follow:  # unsubscribes when left early
            async for event in follow:
                if isinstance(event, StatusEvent | ProgressEvent):
                    yield event
                if isinstance(event, StatusEvent) and event.state.terminal:
                    return

    async def wait(self, timeout: float | None = None) -> StatusEvent:  # noqa: ASYNC109 - API of the brief
        """The terminal status (whatever the outcome).

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout), contextlib.aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, StatusEvent) and event.state.terminal:
                    return event
        raise ClientError(f"job stream {self.client.keys.job(self.job_id)} ended without a terminal status")

    async def download(
        self,
        target: str | os.PathLike[str] | Writable,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - one timeout for the whole download
        on_event: EventCallback | None = None,
    ) -> StatusEvent:
        """Write the trace to a path or a binary writable; verify size and sha256; return the status.

        Chunks of the succeeding attempt are streamed as they arrive. When the job published no
        chunks (blob-only), the trace is fetched from the status ``url`` (signed URL or file://).
        A path is written through ``<path>.part`` and appears only when verified.

        Args:
            target: file path, or an object with ``write(bytes)`` (``seek``/``truncate`` let a
                restarted attempt overwrite what the abandoned one wrote).
            timeout: seconds until :class:`TimeoutError`.
            on_event: called with every status/progress event (e.g. a progress bar).

        Raises:
            JobFailed: the job ended failed, cancelled or dead.
            TraceIntegrityError: size or sha256 mismatch, or chunks missing.
            TimeoutError: not done within ``timeout``.
        """
        sink = TraceSink(target)
        try:
            async with asyncio.timeout(timeout):
                status = await self._receive(sink, on_event)
        except BaseException:
            sink.discard()
            raise
        sink.commit()
        return status

    async def _receive(self, sink: TraceSink, on_event: EventCallback | None) -> StatusEvent:
        chunks = _ChunkState()
        async with contextlib.aclosing(self._follow()) as follow:
            return await self._consume(follow, chunks, sink, on_event)

    async def _consume(
        self,
        follow: AsyncIterator[Event],
        chunks: _ChunkState,
        sink: TraceSink,
        on_event: EventCallback | None,
    ) -> StatusEvent:
        async for event in follow:
            if isinstance(event, ChunkEvent):
                chunks.accept(event, sink)
                del event  # hold no chunk while waiting for the next entry (memory x jobs)
                continue
            if on_event is not None:
                on_event(event)
            if not isinstance(event, StatusEvent):
                continue
            if event.state == JobState.RUNNING and event.attempt > chunks.attempt:
                chunks.restart(event.attempt, sink)
            if not event.state.terminal:
                continue
            if event.state != JobState.SUCCEEDED:
                raise JobFailed(event)
            if chunks.complete_for(event.attempt):
                sink.verify(event.size, event.sha256)
                return event
            # Blob-only (or chunks incomplete): take the object from its fetchable URL.
            source = event.url or (event.uri if event.uri and event.uri.startswith("file://") else None)
            if source is None:
                raise TraceIntegrityError(
                    f"job {self.job_id} succeeded but published no chunks and no fetchable url "
                    f"(object at {event.uri}); read it from the blob store"
                )
            sink.reset()
            await asyncio.to_thread(fetch_url, source, sink)
            sink.verify(event.size, event.sha256)
            return event
        raise ClientError(f"job stream {self.client.keys.job(self.job_id)} ended without a terminal status")

    async def cancel(self) -> None:
        """Ask the worker to stop the job (``SET <job>:cancel 1 EX ttl``); it ends ``cancelled``."""
        await self.client.redis.set(self.client.keys.cancel(self.job_id), "1", ex=self.client.cancel_ttl_s)

    async def state(self) -> StatusEvent | None:
        """The job's latest status from its state hash (one call), or None if unknown/expired."""
        raw = await self.client.redis.hgetall(self.client.keys.state(self.job_id))
        if not raw:
            return None
        event = parse_entry(raw)
        return event if isinstance(event, StatusEvent) else None

    async def _follow(self) -> AsyncGenerator[Event, None]:
        """Every entry of the current run, older attempts' progress and chunks dropped."""
        attempt = 0
        sub = self.client._mux.subscribe(self.client.keys.job(self.job_id), self._start_id)
        try:
            while True:
                fields = await sub.get()
                try:
                    event = parse_entry(fields)
                except ValueError:
                    continue  # an entry type from a newer contract version: not for us
                finally:
                    del fields  # nor its raw fields
                if isinstance(event, StatusEvent) and not event.state.terminal:
                    if event.attempt < attempt:
                        continue
                    attempt = event.attempt
                elif isinstance(event, ProgressEvent | ChunkEvent) and event.attempt < attempt:
                    continue  # a zombie of an abandoned attempt
                yield event
                del event
        finally:
            self.client._mux.unsubscribe(sub)


@dataclass
class _ChunkState:
    """Chunks of the attempt being received: contiguous seq/offset, and whether ``last`` arrived."""

    attempt: int = 0
    seq: int = 0
    last: bool = False

    def restart(self, attempt: int, sink: TraceSink) -> None:
        self.attempt, self.seq, self.last = attempt, 0, False
        sink.reset()

    def accept(self, chunk: ChunkEvent, sink: TraceSink) -> None:
        if chunk.attempt > self.attempt:
            self.restart(chunk.attempt, sink)
        if chunk.seq != self.seq or chunk.offset != sink.size:
            raise TraceIntegrityError(
                f"chunk seq {chunk.seq} at offset {chunk.offset} of attempt {chunk.attempt}; expected "
                f"seq {self.seq} at offset {sink.size} (entries missing from the job stream?)"
            )
        sink.write(chunk.data)
        self.seq += 1
        self.last = chunk.last

    def complete_for(self, attempt: int) -> bool:
        return self.last and self.seq > 0 and self.attempt == attempt


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
