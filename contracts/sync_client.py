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
from collections.abc import AsyncIterator, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from contracts.client import EventCallback, JobHandle, TraceClient
from contracts.events import ProgressEvent, StatusEvent
from contracts.keys import DEFAULT_PREFIX
from contracts.request import TraceRequest

__all__ = ["SyncJobHandle", "SyncTraceClient"]

T = TypeVar("T")


class SyncTraceClient:
    """Blocking :class:`TraceClient`; accepts the same keyword options. Close it (or use ``with``)."""

    def __init__(self, redis_url: str, prefix: str = DEFAULT_PREFIX, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="trace-client", daemon=True)
        self._thread.start()
        self._client: TraceClient = self._call(_make(redis_url, prefix, options))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncTraceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the background loop."""
        if self._loop.is_closed():
            return
        self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def ping(self) -> None:
        self._call(self._client.ping())

    def submit(self, request: TraceRequest) -> SyncJobHandle:
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

    def events(self) -> Iterator[StatusEvent | ProgressEvent]:
        agen = self.handle.events()
        try:
            while True:
                try:
                    yield self._owner._call(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            self._owner._call(agen.aclose())

    def wait(self, timeout: float | None = None) -> StatusEvent:
        return self._owner._call(self.handle.wait(timeout))

    def download(
        self,
        target: str | os.PathLike[str] | Any,
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


async def _make(redis_url: str, prefix: str, options: dict[str, Any]) -> TraceClient:
    return TraceClient(redis_url, prefix, **options)  # created on the loop that will use it


async def _next(agen: AsyncIterator[T]) -> T:
    return await agen.__anext__()
