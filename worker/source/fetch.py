"""Bounded concurrent fetch of many streams, handed over in a fixed order.

Upstream was slow with ~50 threads because it fetched them one after another, and ran out of
memory when it fetched them all at once. Here up to ``concurrency`` streams are read at the same
time; the consumer gets stream 0's batches, then stream 1's, and so on. The stream being consumed
queues at most ``buffer`` batches. The streams read ahead of it queue at most ``buffer`` batches
each and, together, at most ``max_bytes`` (a stream ahead reads its next batch only while the
bytes queued ahead are under it, or while it holds none of them: streams further ahead that filled
them do not keep a nearer one from starting): memory is bounded by bytes, whatever the number of
streams and the size of the batches a server chooses to send. When a stream reads no further, gRPC
flow control stops the server.
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


class _Ahead(Generic[B]):
    """Bytes queued by the streams read ahead of the one being consumed, against their limit: the
    one place they are counted (:meth:`count`) and let go (:meth:`release`)."""

    def __init__(self, limit: int | None, size: Callable[[B], int] | None) -> None:
        self.limit = limit
        self.queued = 0
        self._size = size
        self.changed = asyncio.Condition()

    async def wait_room(self, fetch: _Fetch[B]) -> None:
        """Return when ``fetch`` may read its next item: it is the stream being consumed (bound by
        its queue alone), it holds no bytes counted ahead (its first item: every stream read at once
        has sent its query and has a batch ready, however much the streams further ahead hold), or
        the bytes queued ahead are under the limit."""
        limit = self.limit
        if limit is None:
            return
        async with self.changed:
            await self.changed.wait_for(lambda: fetch.current or fetch.counted == 0 or self.queued < limit)

    def count(self, fetch: _Fetch[B], item: B) -> None:
        """Count ``item``, just read by ``fetch``, while ``fetch`` is a stream ahead."""
        if self.limit is None or self._size is None or fetch.current:
            return
        size = self._size(item)
        fetch.counted += size
        self.queued += size

    async def release(self, fetch: _Fetch[B]) -> None:
        """Let ``fetch``'s counted bytes go (it is being consumed now) and wake the readers."""
        counted, fetch.counted = fetch.counted, 0
        if self.limit is None:
            return
        self.queued -= counted
        async with self.changed:
            self.changed.notify_all()


class _Fetch(Generic[B]):
    """One stream being read into its bounded queue by its own task."""

    def __init__(self, stream: AsyncGenerator[B, None], buffer: int, ahead: _Ahead[B]) -> None:
        self.queue: asyncio.Queue[B | _End | _Failed] = asyncio.Queue(maxsize=buffer)
        self.current = False
        #: Bytes of this stream counted in ``ahead`` (its items queued or in hand while it was ahead).
        self.counted = 0
        self._ahead = ahead
        self.task = asyncio.create_task(self._pump(stream))

    async def _pump(self, stream: AsyncGenerator[B, None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                while True:
                    await self._ahead.wait_room(self)
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        break
                    self._ahead.count(self, item)
                    await self.queue.put(item)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # Any other (an Exception, or a library's own BaseException) goes to the consumer, which
            # would otherwise wait for this stream's end forever.
            await self.queue.put(_Failed(exc))
        else:
            await self.queue.put(_End())

    async def make_current(self) -> None:
        """This stream is being consumed now: its queued bytes no longer count against those ahead."""
        self.current = True
        await self._ahead.release(self)


async def ordered_fetch(
    count: int,
    open_stream: Callable[[int], AsyncGenerator[B, None]],
    *,
    concurrency: int,
    buffer: int,
    max_bytes: int | None = None,
    size: Callable[[B], int] | None = None,
) -> AsyncGenerator[tuple[int, B | None], None]:
    """Items of streams ``0..count-1``, stream after stream, each followed by ``(index, None)``.

    Args:
        count: How many streams.
        open_stream: Opens stream ``index`` (an async iterator; it is closed when done or abandoned).
        concurrency: Streams read at the same time (the one being consumed included).
        buffer: Items queued per stream.
        max_bytes: Bytes queued by all the streams read ahead together (None: no limit). A stream
            ahead holding some of them stops reading while they are at or over it, so the limit
            may be passed by one item per stream ahead.
        size: Bytes of an item (required with ``max_bytes``), e.g. ``RecordBatch.nbytes``.

    Raises:
        ValueError: ``concurrency`` or ``buffer`` under 1, ``max_bytes`` under 1 or without ``size``.
        Exception: the first failure of the stream being consumed, as raised by it. Streams read
            ahead that fail only surface their error when their turn comes.
    """
    if concurrency < 1 or buffer < 1:
        raise ValueError("concurrency and buffer must be at least 1")
    if max_bytes is not None and (max_bytes < 1 or size is None):
        raise ValueError("max_bytes must be at least 1 and needs size")
    ahead = _Ahead(max_bytes, size)
    fetches: dict[int, _Fetch[B]] = {}
    started = 0
    try:
        for index in range(count):
            while started < count and started < index + concurrency:
                fetches[started] = _Fetch(open_stream(started), buffer, ahead)
                started += 1
            fetch = fetches[index]
            await fetch.make_current()
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
