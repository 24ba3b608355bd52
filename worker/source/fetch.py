"""Bounded concurrent fetch of many streams, handed over in a fixed order.

Upstream was slow with ~50 threads because it fetched them one after another, and ran out of
memory when it fetched them all at once. Here up to ``concurrency`` streams are read at the same
time; the consumer gets stream 0's batches, then stream 1's, and so on. Each stream fetched ahead
has a queue of at most ``buffer`` batches: when it is full the fetch stops reading (and gRPC flow
control stops the server), so memory is bounded by ``concurrency x (buffer + driver prefetch)``
batches, whatever the number or size of streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Generic, TypeVar

__all__ = ["ordered_fetch"]

B = TypeVar("B")


class _End:
    """Marks the end of one stream in its queue."""


class _Failed:
    """Carries a stream's exception to the consumer, in order."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Fetch(Generic[B]):
    """One stream being read into its bounded queue by its own task."""

    def __init__(self, stream: AsyncGenerator[B, None], buffer: int) -> None:
        self.queue: asyncio.Queue[B | _End | _Failed] = asyncio.Queue(maxsize=buffer)
        self.task = asyncio.create_task(self._pump(stream))

    async def _pump(self, stream: AsyncGenerator[B, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for item in stream:
                    await self.queue.put(item)
        except Exception as exc:
            await self.queue.put(_Failed(exc))
        else:
            await self.queue.put(_End())


async def ordered_fetch(
    count: int,
    open_stream: Callable[[int], AsyncGenerator[B, None]],
    *,
    concurrency: int,
    buffer: int,
) -> AsyncGenerator[tuple[int, B | None], None]:
    """Items of streams ``0..count-1``, stream after stream, each followed by ``(index, None)``.

    Args:
        count: How many streams.
        open_stream: Opens stream ``index`` (an async iterator; it is closed when done or abandoned).
        concurrency: Streams read at the same time (the one being consumed included).
        buffer: Items queued per stream read ahead.

    Raises:
        Exception: the first failure of the stream being consumed, as raised by it. Streams read
            ahead that fail only surface their error when their turn comes.
    """
    if concurrency < 1 or buffer < 1:
        raise ValueError("concurrency and buffer must be at least 1")
    fetches: dict[int, _Fetch[B]] = {}
    started = 0
    try:
        for index in range(count):
            while started < count and started < index + concurrency:
                fetches[started] = _Fetch(open_stream(started), buffer)
                started += 1
            fetch = fetches[index]
            while True:
                item = await fetch.queue.get()
                if isinstance(item, _End):
                    break
                if isinstance(item, _Failed):
                    raise item.exc
                yield index, item
            await fetch.task
            del fetches[index]
            yield index, None
    finally:
        for fetch in fetches.values():
            fetch.task.cancel()
        if fetches:
            await asyncio.gather(*(f.task for f in fetches.values()), return_exceptions=True)
