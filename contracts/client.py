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
import re
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pydantic
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from contracts._download import TraceSink, Writable, fetch_url
from contracts._reader import StreamReader
from contracts._runs import RERUN_STATES, RedisLike, Run, before, redis_errors, run_start, snapshot
from contracts.client_errors import (
    ClientError,
    ConnectionLost,
    InvalidJobId,
    InvalidRequest,
    JobFailed,
    JobNotFound,
    TraceIntegrityError,
    WaitTimeout,
)
from contracts.events import CancelEvent, ChunkEvent, Event, ProgressEvent, StatusEvent, parse_entry
from contracts.keys import DEFAULT_PREFIX, Keys
from contracts.redis_cancel import honour_cancellation, honour_cluster_cancellation
from contracts.request import JOB_ID_PATTERN, MAX_REQUEST_BYTES, TraceRequest
from contracts.states import JobState
from contracts.urls import mask_url

__all__ = [
    "CLUSTER_MAX_CONNECTIONS",
    "ClientError",
    "ConnectionLost",
    "EventCallback",
    "InvalidJobId",
    "InvalidRequest",
    "JobFailed",
    "JobHandle",
    "JobHealth",
    "JobNotFound",
    "TraceClient",
    "TraceIntegrityError",
    "WaitTimeout",
]

EventCallback = Callable[[StatusEvent | ProgressEvent], object]
#: Most connections a cluster client opens to one master (redis-py's cluster client fails a command
#: beyond its cap instead of waiting; a burst of concurrent calls needs one connection each).
CLUSTER_MAX_CONNECTIONS = 1000
_JOB_ID = re.compile(JOB_ID_PATTERN)


class TraceClient:
    """Talks to the workers through Redis only (the wire contract in docs/PROTOCOL.md).

    Args:
        redis_url: ``redis://`` or ``rediss://`` URL (password in the URL).
        prefix: key prefix of the deployment (``TRACE_WORKER_KEY_PREFIX``).
        max_connections: size of the command connection pool (the reader has its own connection).
        reconnect_timeout_s: how long the reader keeps retrying an unreachable Redis before every
            follower gets :class:`ConnectionLost`.
        block_ms: longest single ``XREAD BLOCK`` (new followers interrupt it with CLIENT UNBLOCK).
        cancel_ttl_s: unused since cancels are entries on ``<prefix>:cancels`` (kept for callers).
        client_name: CLIENT SETNAME of the connections (the reader's gets ``-reader`` appended),
            so an operator can tell them apart in CLIENT LIST.
        max_buffered_bytes: most bytes of received entries waiting for their followers, all jobs
            together (bounds the client's memory whatever the number of jobs).
        file_root: the local-folder blob store's folder, when blob-only traces may be read from
            ``file://`` URLs; without it a ``file://`` result is refused.
        cluster: ``redis_url`` names one node of a Redis Cluster (``TRACE_WORKER_REDIS_CLUSTER``;
            the others are discovered): commands go through redis-py's ``RedisCluster``, and the
            shared reader reads the followed streams of each hash slot apart (see docs/CLIENT.md).
            redis-py's cluster client cannot wait for a free connection (it fails the command), so
            ``max_connections`` does not apply: each master gets the connections concurrent calls
            need, up to :data:`CLUSTER_MAX_CONNECTIONS`.

    Every error is a :class:`ClientError` (see :mod:`contracts.client_errors`).
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
        file_root: str | os.PathLike[str] | None = None,
        cluster: bool = False,
    ) -> None:
        self.keys = Keys(prefix)
        #: Whether Redis is a Redis Cluster.
        self.cluster = cluster
        #: Local folder whose file:// trace URLs this client may read (a local-folder blob store).
        self.file_root = os.path.realpath(file_root) if file_root is not None else None
        self.redis_url = redis_url
        self.cancel_ttl_s = cancel_ttl_s
        self.client_name = client_name
        self.redis: RedisLike
        try:
            if cluster:
                cluster_client = RedisCluster.from_url(
                    redis_url, max_connections=CLUSTER_MAX_CONNECTIONS, client_name=client_name
                )
                self.redis = honour_cluster_cancellation(cluster_client)
            else:
                pool: aioredis.BlockingConnectionPool = aioredis.BlockingConnectionPool.from_url(
                    redis_url,
                    max_connections=max_connections,
                    timeout=reconnect_timeout_s,
                    client_name=client_name,
                )
                self.redis = aioredis.Redis(connection_pool=honour_cancellation(pool))
        except (ValueError, RedisClusterException) as exc:
            raise InvalidRequest(f"bad Redis URL {_safe_url(redis_url)}: {exc}") from exc
        self._mux = StreamReader(
            redis_url=redis_url,
            client_name=client_name,
            commands=self.redis,
            block_ms=block_ms,
            reconnect_timeout_s=reconnect_timeout_s,
            max_buffered_bytes=max(max_buffered_bytes, 4 * 1024 * 1024),
            cluster=cluster,
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
        if isinstance(self.redis, aioredis.Redis):
            await self.redis.connection_pool.disconnect()

    def allows_file(self, url: str) -> bool:
        """Whether a file:// URL from a status lies under :attr:`file_root` (never otherwise)."""
        if self.file_root is None:
            return False
        path = os.path.realpath(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        return os.path.commonpath([path, self.file_root]) == self.file_root

    async def ping(self) -> None:
        """Raise :class:`ConnectionLost` unless Redis answers."""
        async with redis_errors(f"ping {_safe_url(self.redis_url)}"):
            await self.redis.ping()

    async def submit(self, request: TraceRequest | Mapping[str, Any]) -> JobHandle:
        """Send the request (XADD on the request stream) and return its job at once.

        ``request`` is a :class:`TraceRequest` or the same fields as a mapping (validated here).
        Resubmitting a request whose job failed, was cancelled or went dead starts a new run; the
        handle then follows only that run. A request for a running or finished job starts no work
        (the worker answers with the job's state, ``detail`` "duplicate request; ..."); the handle
        follows the existing job, and its ``events()`` of an already succeeded job yield that
        answer alone (not the old run's history).

        Raises:
            InvalidRequest: the request breaks the contract (fields, size).
            ConnectionLost: Redis unreachable.
        """
        request = _validated(request)
        job_id = request.effective_job_id()
        raw = request.to_json()
        if len(raw.encode()) > MAX_REQUEST_BYTES:
            raise InvalidRequest(f"request is larger than {MAX_REQUEST_BYTES} bytes")
        snap = await snapshot(self.redis, self.keys, job_id, pending=False)
        run = await run_start(self.redis, self.keys, job_id, snap, rerun=snap.current in RERUN_STATES)
        async with redis_errors(f"submit to {_safe_url(self.redis_url)}"):
            entry_id = _text(await self.redis.xadd(self.keys.requests, {"request": raw}))
        if snap.current == JobState.SUCCEEDED:
            run = Run(run.position, run.min_attempt, answer_from=before(entry_id))
        return JobHandle(self, job_id, run=run, request=request, request_id=entry_id)

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job: its latest run (the one ``state()`` describes).

        Raises:
            InvalidJobId: not 1-128 characters of ``[A-Za-z0-9._-]``.
        """
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise InvalidJobId(f"bad job id {job_id!r}: 1-128 characters of [A-Za-z0-9._-]")
        return JobHandle(self, job_id)

    async def recent_jobs(self, count: int = 20) -> list[StatusEvent]:
        """Latest status of the most recently active jobs (from the events stream), newest first."""
        latest: dict[str, StatusEvent] = {}
        last = "+"
        async with redis_errors("reading recent jobs"):
            while len(latest) < count:
                page = await self.redis.xrevrange(
                    self.keys.events, max=last, min="-", count=max(count * 4, 100)
                )
                if not page:
                    break
                for _entry_id, fields in page:
                    with contextlib.suppress(ValueError):
                        event = parse_entry(fields or {})
                        if isinstance(event, StatusEvent) and event.job_id not in latest:
                            latest[event.job_id] = event
                last = "(" + _text(page[-1][0])
        return list(latest.values())[:count]


@dataclass(frozen=True)
class JobHealth:
    """Whether a job is making progress, from its state and its lease (:meth:`JobHandle.health`).

    Attributes:
        status: the latest status, as :meth:`JobHandle.state` (None: unknown job).
        holder: ``<consumer>/<request entry id>/<attempt>`` of the worker holding the lease, or None.
        lease_expires_in_s: seconds until the lease runs out unless renewed (None: no lease).
        silent_s: seconds since the holder last renewed its lease (its heartbeat), when the running
            status says how long a lease lasts; None otherwise.
        stale: the job is running but its worker missed three heartbeats, or its lease has
            expired (the worker is gone; another worker takes the job over after ``lease_s``).
    """

    status: StatusEvent | None
    holder: str | None
    lease_expires_in_s: float | None
    silent_s: float | None
    stale: bool


class JobHandle:
    """One job: follow it, receive its trace, cancel it. Cheap; create as many as needed.

    ``request_id`` is the request stream entry id of the request this handle sent (None for a
    handle from :meth:`TraceClient.job`).
    """

    def __init__(
        self,
        client: TraceClient,
        job_id: str,
        *,
        run: Run | None = None,
        request: TraceRequest | None = None,
        request_id: str | None = None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.request = request
        self.request_id = request_id
        self._run = run
        #: Whether the worker named our request in an answer (it follows PROTOCOL v1.1 §2).
        self._named = False
        #: Whether an entry of a started attempt (attempt >= 1) was seen.
        self._ran = False

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r})"

    async def _resolve(self) -> Run:
        """The run this handle follows: for :meth:`TraceClient.job`, the latest one at first use."""
        if self._run is None:
            redis, keys = self.client.redis, self.client.keys
            snap = await snapshot(redis, keys, self.job_id)
            if not snap.known:
                raise JobNotFound(self.job_id)
            self._run = await run_start(redis, keys, self.job_id, snap, rerun=snap.rerun_pending)
        return self._run

    async def events(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline over every next()
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[StatusEvent | ProgressEvent, None]:
        """Status and progress events of the run, ending with its terminal status.

        Reads the job's status stream (no chunk bytes are transferred). A handle from
        :meth:`TraceClient.job` starts at its latest run's start (the history of that run, then
        live events; progress entries carry their ``time``); a handle from ``submit`` of an
        already succeeded job yields the worker's answer to that request only (``detail``
        "duplicate request; ..."). Survives Redis reconnects and drops entries of abandoned
        attempts (anything older than the newest ``status running``).

        Args:
            timeout: seconds for the whole iteration (time spent by the caller between events
                counts too).
            idle_timeout: seconds without any event (e.g. a worker gone silent).

        Raises:
            WaitTimeout: ``timeout`` or ``idle_timeout`` ran out (the job goes on).
            JobNotFound: a handle from :meth:`TraceClient.job` of an unknown job.
            ConnectionLost: Redis unreachable for longer than ``reconnect_timeout_s``.
        """
        run = await self._resolve()
        start = run.answer_from if run.answer_from is not None else run.position
        key = self.client.keys.status_stream(self.job_id)
        follow = self._follow(key, start, run.min_attempt, timeout=timeout, idle_timeout=idle_timeout)
        async with contextlib.aclosing(follow):  # unsubscribes when left early
            async for event in follow:
                if isinstance(event, StatusEvent | ProgressEvent):
                    yield event
                if self._ends(event):
                    return

    def _ends(self, event: Event) -> bool:
        """Whether ``event`` ends this handle: the terminal status answering its own request
        (PROTOCOL §2); for a handle from :meth:`TraceClient.job`, the job's end (a request that
        was cancelled alone did not end the job)."""
        if not isinstance(event, StatusEvent):
            return False
        if event.request_id is not None and event.request_id == self.request_id:
            self._named = True
        self._ran = self._ran or event.attempt > 0
        if not event.state.terminal:
            return False
        if self.request_id is None and event.request_id is not None and event.attempt == 0 and self._ran:
            return False  # another request's answer that started no attempt (invalid, conflicting)
        if self.request_id is not None:
            if event.request_id == self.request_id:
                return True
            # A v1 worker names no request (it never answers ours): its terminal status is the answer.
            return event.request_id is None and not self._named
        return not (event.state == JobState.CANCELLED and event.request_id is not None)

    async def wait(self, timeout: float | None = None) -> StatusEvent:  # noqa: ASYNC109 - API of the brief
        """The terminal status (whatever the outcome).

        Raises:
            WaitTimeout: not finished within ``timeout`` seconds (a ``TimeoutError`` too).
            JobNotFound: a handle from :meth:`TraceClient.job` of an unknown job.
        """
        async with contextlib.aclosing(self.events(timeout=timeout)) as events:
            async for event in events:
                if isinstance(event, StatusEvent) and self._ends(event):
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
            target: file path, or an object with ``write(bytes)``, plain or ``async def``
                (``seek``/``truncate`` let a restarted attempt overwrite what the abandoned one
                wrote; ``flush`` is called at the end).
            timeout: seconds until :class:`WaitTimeout`.
            on_event: called with every status/progress event (e.g. a progress bar).

        Raises:
            JobFailed: the job ended failed, cancelled or dead.
            TraceIntegrityError: size or sha256 mismatch, or chunks missing.
            WaitTimeout: not done within ``timeout``.
            InvalidRequest: ``target`` is neither a path nor a writable.
            JobNotFound: a handle from :meth:`TraceClient.job` of an unknown job.
        """
        sink = TraceSink(target)
        try:
            try:
                async with asyncio.timeout(timeout):
                    status = await self._receive(sink, on_event)
            except TimeoutError as exc:
                if isinstance(exc, ClientError):
                    raise
                raise WaitTimeout(f"job {self.job_id}: no trace within {timeout}s") from exc
            await sink.commit()
        except BaseException:
            sink.discard()
            raise
        return status

    async def _receive(self, sink: TraceSink, on_event: EventCallback | None) -> StatusEvent:
        run = await self._resolve()
        kept = await self._chunks_expired()
        if kept is not None:
            if on_event is not None:
                on_event(kept)
            return await self._from_blob(kept, sink)
        chunks = _ChunkState()
        follow = self._follow(self.client.keys.job(self.job_id), run.position, run.min_attempt)
        async with contextlib.aclosing(follow):
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
                await chunks.accept(event, sink)
                del event  # hold no chunk while waiting for the next entry (memory x jobs)
                continue
            if isinstance(event, CancelEvent):
                continue
            if on_event is not None:
                on_event(event)
            if not isinstance(event, StatusEvent):
                continue
            if event.state == JobState.RUNNING and event.attempt > chunks.attempt:
                await chunks.restart(event.attempt, sink)
            if not self._ends(event):
                continue
            if event.state != JobState.SUCCEEDED:
                raise JobFailed(event)
            if event.size is None or event.sha256 is None:
                raise TraceIntegrityError(
                    f"job {self.job_id}: the succeeded status carries no size or sha256; refusing an "
                    "unverifiable result"
                )
            if chunks.complete_for(event.attempt):
                sink.verify(event.size, event.sha256)
                return event
            if event.chunks and event.start_id is not None:
                # The answered attempt's chunks are earlier on the stream (e.g. a duplicate's answer).
                await chunks.restart(event.attempt, sink)
                await self._reread(event, chunks, sink)
                if chunks.complete_for(event.attempt):
                    sink.verify(event.size, event.sha256)
                    return event
            # Blob-only (or chunks incomplete): take the object from its fetchable URL.
            return await self._from_blob(event, sink)
        raise ClientError(f"job stream {self.client.keys.job(self.job_id)} ended without a terminal status")

    async def _reread(self, status: StatusEvent, chunks: _ChunkState, sink: TraceSink) -> None:
        """Chunks of ``status.attempt`` from ``status.start_id`` on (XRANGE in bounded pages)."""
        key = self.client.keys.job(self.job_id)
        start = status.start_id or "0"
        while not chunks.last:
            async with redis_errors(f"reading job {self.job_id}"):
                page: Any = await self.client.redis.xrange(key, min=start, max="+", count=8)
            if not page:
                return
            for entry_id, fields in page:
                start = "(" + _text(entry_id)
                with contextlib.suppress(ValueError):
                    event = parse_entry(fields)
                    if isinstance(event, ChunkEvent) and event.attempt == status.attempt:
                        await chunks.accept(event, sink)
                        if chunks.last:
                            return

    async def _chunks_expired(self) -> StatusEvent | None:
        """The succeeded status when the job's stream (its chunks) has expired while its status
        (``:state``, ``:status``, kept ``job_ttl_s``) says succeeded and no new run is pending:
        the trace is then read from the blob. None otherwise (follow the job stream)."""
        snap = await snapshot(self.client.redis, self.client.keys, self.job_id)
        if snap.current != JobState.SUCCEEDED or snap.job_stream_exists or snap.submitted is not None:
            return None
        return snap.status(self.job_id)

    async def _from_blob(self, event: StatusEvent, sink: TraceSink) -> StatusEvent:
        """Fetch a succeeded job's object from its ``url`` (or file:// ``uri``), verifying size and sha256."""
        source = event.url or (event.uri if event.uri and event.uri.startswith("file://") else None)
        if source is not None and source.startswith("file://") and not self.client.allows_file(source):
            root = self.client.file_root or "none set"
            raise TraceIntegrityError(
                f"job {self.job_id}'s chunks are gone and its trace is a local file ({source}) outside "
                f"this client's file_root ({root}); give the client the worker's blob folder as "
                "file_root (trace-worker commands: set TRACE_WORKER_BLOB_URL=file://<that folder>)"
            )
        if source is None:
            raise TraceIntegrityError(
                f"job {self.job_id} succeeded but its chunks are gone (blob-only, or expired) and it has "
                f"no fetchable url (object at {event.uri}); read it from the blob store"
            )
        await sink.reset()
        await fetch_url(source, sink, gzip=event.encoding == "gzip")
        sink.verify(event.size, event.sha256)
        return event

    async def cancel(self, timeout: float = 10.0) -> CancelEvent | None:  # noqa: ASYNC109
        """Cancel this handle's request (or, on a handle from :meth:`TraceClient.job`, the job for
        every request): XADD ``job_id`` [``request_id``] on ``<prefix>:cancels`` (PROTOCOL §5) and
        wait up to ``timeout`` for the worker's answer. A shared job goes on while other requests
        want it.

        Returns:
            The worker's answer (``outcome``: cancelled, detached, pending, not_found,
            already_ended), or None when no worker answered within ``timeout``.
        """
        redis, keys = self.client.redis, self.client.keys
        fields = {"job_id": self.job_id}
        if self.request_id is not None:
            fields["request_id"] = self.request_id
        async with redis_errors(f"cancelling job {self.job_id}"):
            newest: Any = await redis.xrevrange(keys.job(self.job_id), count=1)
            last = _text(newest[0][0]) if newest else "0-0"
            cancel_id = _text(await redis.xadd(keys.cancels, fields))  # type: ignore[arg-type]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (left := deadline - loop.time()) > 0:
                block = max(1, int(min(left, 1.0) * 1000))
                reply: Any = await redis.xread({keys.job(self.job_id): last}, count=50, block=block)
                for _key, entries in reply or []:
                    for entry_id, entry in entries:
                        last = _text(entry_id)
                        with contextlib.suppress(ValueError):
                            event = parse_entry(entry)
                            if isinstance(event, CancelEvent) and event.cancel_id == cancel_id:
                                return event
        return None

    async def state(self) -> StatusEvent | None:
        """The job's latest status (the state hash); ``queued`` while a request for it waits on the
        request stream (also a resubmission of an ended job); None for an unknown job (never
        submitted, or expired)."""
        snap = await snapshot(self.client.redis, self.client.keys, self.job_id)
        return snap.status(self.job_id)

    async def health(self) -> JobHealth:
        """The latest status and the lease of the worker running the job (one pipeline).

        A live worker renews its lease every ``heartbeat_s``; ``silent_s`` growing past that (or
        ``stale``) means the worker stopped, and another one will take the job over once the lease
        (``lease_s``) has run out.
        """
        keys, job_id = self.client.keys, self.job_id
        snap = await snapshot(self.client.redis, keys, job_id)
        async with (
            redis_errors(f"reading job {job_id}"),
            self.client.redis.pipeline(transaction=False) as pipe,
        ):
            pipe.get(keys.lock(job_id))
            pipe.pttl(keys.lock(job_id))
            holder_raw, pttl = await pipe.execute()
        status = snap.status(job_id)
        holder = _text(holder_raw) if holder_raw is not None else None
        expires = pttl / 1000 if holder is not None and pttl >= 0 else None
        silent: float | None = None
        stale = False
        if status is not None and status.state == JobState.RUNNING:
            if holder is None:
                stale = True
            elif expires is not None and status.lease_s is not None:
                silent = max(0.0, status.lease_s - expires)
                stale = status.heartbeat_s is not None and silent > 3 * status.heartbeat_s
        return JobHealth(status, holder, expires, silent, stale)

    async def _follow(
        self,
        key: str,
        start: str,
        min_attempt: int,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline over every get()
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Every entry of one stream of the run, older runs' and attempts' entries dropped."""
        attempt = min_attempt
        deadline = None if timeout is None else time.monotonic() + timeout
        sub = self.client._mux.subscribe(key, start)
        try:
            while True:
                fields = await self._next(sub, deadline, idle_timeout)
                try:
                    event = parse_entry(fields)
                except ValueError:
                    continue  # an entry type from a newer contract version: not for us
                finally:
                    del fields  # nor its raw fields
                mine = self.request_id is not None and getattr(event, "request_id", None) == self.request_id
                if event.attempt < min_attempt and not mine:
                    continue  # an earlier run's entry in the millisecond where this run starts
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

    async def _next(self, sub: Any, deadline: float | None, idle: float | None) -> dict[Any, Any]:
        if deadline is None and idle is None:
            fields: dict[Any, Any] = await sub.get()
            return fields
        left = [v for v in (idle, None if deadline is None else deadline - time.monotonic()) if v is not None]
        try:
            async with asyncio.timeout(max(0.0, min(left))):
                fields = await sub.get()
                return fields
        except TimeoutError as exc:
            raise WaitTimeout(f"job {self.job_id}: no event within the timeout") from exc


@dataclass
class _ChunkState:
    """Chunks of the attempt being received: contiguous seq/offset, and whether ``last`` arrived."""

    attempt: int = 0
    seq: int = 0
    last: bool = False

    async def restart(self, attempt: int, sink: TraceSink) -> None:
        self.attempt, self.seq, self.last = attempt, 0, False
        await sink.reset()

    async def accept(self, chunk: ChunkEvent, sink: TraceSink) -> None:
        if chunk.attempt > self.attempt:
            await self.restart(chunk.attempt, sink)
        if chunk.seq != self.seq or chunk.offset != sink.size:
            raise TraceIntegrityError(
                f"chunk seq {chunk.seq} at offset {chunk.offset} of attempt {chunk.attempt}; expected "
                f"seq {self.seq} at offset {sink.size} (entries missing from the job stream?)"
            )
        await sink.write(chunk.data)
        self.seq += 1
        self.last = chunk.last

    def complete_for(self, attempt: int) -> bool:
        return self.last and self.seq > 0 and self.attempt == attempt


def _validated(request: TraceRequest | Mapping[str, Any]) -> TraceRequest:
    if isinstance(request, TraceRequest):
        return request
    try:
        return TraceRequest.model_validate(request)
    except pydantic.ValidationError as exc:
        raise InvalidRequest(f"invalid trace request: {exc}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return mask_url(url)
