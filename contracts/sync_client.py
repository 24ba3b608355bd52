"""Blocking wrapper over :class:`contracts.client.TraceClient`, for scripts and threaded code.

The async client runs on a private event loop in one background thread; every method blocks until
its coroutine finishes. Same methods, same errors.

Example:
    >>> with SyncTraceClient("redis://127.0.0.1:6379/0") as client:  # doctest: +SKIP
    ...     job = client.submit(TraceRequest(process_id="34d7c06d-3163-4111-863e-c5fc09d22d51"))
    ...     status = job.download("trace.pftrace", timeout=300)
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from contracts._download import Writable
from contracts.client import EventCallback, JobHandle, JobHealth, TraceClient
from contracts.client_errors import ClientError
from contracts.events import ProgressEvent, StatusEvent
from contracts.keys import DEFAULT_PREFIX
from contracts.request import TraceRequest

__all__ = ["SyncJobHandle", "SyncTraceClient"]

T = TypeVar("T")


class SyncTraceClient:
    """Blocking :class:`TraceClient`; accepts the same keyword options. Close it (or use ``with``).

    A call interrupted in the calling thread (Ctrl-C during ``wait()``) cancels its coroutine on
    the background loop; leaving an ``events()`` loop early closes its follower; ``close()`` ends
    whatever is still running, so nothing is left pending when the loop closes.
    """

    def __init__(self, redis_url: str, prefix: str = DEFAULT_PREFIX, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trace-client", daemon=True)
        self._thread.start()
        try:
            self._client: TraceClient = self._call(_make(redis_url, prefix, options))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise ClientError("the SyncTraceClient is closed")
        task: list[asyncio.Task[Any]] = []
        future = asyncio.run_coroutine_threadsafe(_tracked(coro, task), self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted here (KeyboardInterrupt, SystemExit): cancel the coroutine on the loop too,
            # and wait until it has unwound (unsubscribed, closed its generators) before going on.
            if not future.done():
                future.cancel()  # also when the coroutine has not started yet
                asyncio.run_coroutine_threadsafe(_cancel(task), self._loop).result(timeout=30)
            raise

    def __enter__(self) -> SyncTraceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the background loop (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._call(_shutdown(self._client))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def ping(self) -> None:
        self._call(self._client.ping())

    def submit(self, request: TraceRequest | Mapping[str, Any]) -> SyncJobHandle:
        return SyncJobHandle(self, self._call(self._client.submit(request)))

    def job(self, job_id: str) -> SyncJobHandle:
        return SyncJobHandle(self, self._client.job(job_id))

    def recent_jobs(self, count: int = 20) -> list[StatusEvent]:
        return self._call(self._client.recent_jobs(count))


class SyncJobHandle:
    """Blocking :class:`JobHandle`."""

    def __init__(self, owner: SyncTraceClient, handle: JobHandle) -> None:
        self._owner = owner
        self.handle = handle
        self.job_id = handle.job_id

    def events(
        self, *, timeout: float | None = None, idle_timeout: float | None = None
    ) -> Iterator[StatusEvent | ProgressEvent]:
        """Like :meth:`JobHandle.events`; leaving the loop early (break, exception) closes it."""
        agen = self.handle.events(timeout=timeout, idle_timeout=idle_timeout)
        try:
            while True:
                try:
                    yield self._owner._call(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            if not self._owner._loop.is_closed():
                self._owner._call(agen.aclose())

    def wait(self, timeout: float | None = None) -> StatusEvent:
        return self._owner._call(self.handle.wait(timeout))

    def download(
        self,
        target: str | os.PathLike[str] | Writable,
        *,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> StatusEvent:
        """Like :meth:`JobHandle.download`; ``on_event`` runs on the client's background thread."""
        return self._owner._call(self.handle.download(target, timeout=timeout, on_event=on_event))

    def cancel(self) -> None:
        self._owner._call(self.handle.cancel())

    def state(self) -> StatusEvent | None:
        return self._owner._call(self.handle.state())

    def health(self) -> JobHealth:
        return self._owner._call(self.handle.health())


async def _make(redis_url: str, prefix: str, options: dict[str, Any]) -> TraceClient:
    return TraceClient(redis_url, prefix, **options)  # created on the loop that will use it


async def _tracked(coro: Coroutine[Any, Any, T], task: list[asyncio.Task[Any]]) -> T:
    """Run ``coro``, telling the caller which task runs it (so that it can be cancelled and awaited)."""
    current = asyncio.current_task()
    if current is not None:
        task.append(current)
    return await coro


async def _cancel(task: list[asyncio.Task[Any]]) -> None:
    """Cancel a call's task and wait until it has finished."""
    for t in task:
        t.cancel()
        await asyncio.wait([t])


async def _shutdown(client: TraceClient) -> None:
    """Cancel what still runs on the loop (an abandoned call), close the client and every open
    async generator, so that closing the loop destroys no pending task."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await client.aclose()
    await asyncio.get_running_loop().shutdown_asyncgens()


async def _next(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()
