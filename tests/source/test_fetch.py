"""Ordered, bounded concurrent fetch (in-memory streams; the Flight SQL side is tested elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

import pytest

from worker.source.fetch import ordered_fetch


class Streams:
    """In-memory streams that record how far each was read and whether it was closed."""

    def __init__(self, sizes: list[int], fail_at: dict[int, int] | None = None) -> None:
        self.sizes = sizes
        self.fail_at = fail_at or {}
        self.produced = [0] * len(sizes)
        self.opened: list[int] = []
        self.closed: set[int] = set()
        self.active = 0
        self.max_active = 0
        self.changed = asyncio.Event()

    async def open(self, index: int) -> AsyncGenerator[tuple[int, int], None]:
        self.opened.append(index)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for i in range(self.sizes[index]):
                if self.fail_at.get(index) == i:
                    raise RuntimeError(f"stream {index} broke")
                self.produced[index] += 1
                self.changed.set()
                yield index, i
                await asyncio.sleep(0)  # let other fetches run, as real I/O would
        finally:
            self.active -= 1
            self.closed.add(index)
            self.changed.set()


async def test_order_and_completeness() -> None:
    streams = Streams([3, 0, 5, 1, 4, 2, 7])
    got = [item async for item in ordered_fetch(7, streams.open, concurrency=3, buffer=2)]
    expected: list[tuple[int, tuple[int, int] | None]] = []
    for index, size in enumerate(streams.sizes):
        expected += [(index, (index, i)) for i in range(size)] + [(index, None)]
    assert got == expected
    assert streams.max_active <= 3
    assert streams.closed == set(range(7))


async def test_read_ahead_is_bounded_by_buffer() -> None:
    streams = Streams([1, 100, 100, 100])
    fetch = ordered_fetch(4, streams.open, concurrency=3, buffer=2)
    assert await anext(fetch) == (0, (0, 0))
    # Streams 1 and 2 run ahead until their queues (2) plus one item in hand are full.
    async with asyncio.timeout(5):
        while streams.produced[1] < 3 or streams.produced[2] < 3:
            streams.changed.clear()
            await streams.changed.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    assert streams.produced[1] == 3 and streams.produced[2] == 3
    assert streams.produced[3] == 0  # not started: only `concurrency` streams at once
    await fetch.aclose()
    assert streams.closed == {0, 1, 2}


async def _settle(streams: Streams, done: Callable[[], bool]) -> None:
    """Wait until ``done()``, then give every task time to run further if it can."""
    async with asyncio.timeout(5):
        while not done():
            streams.changed.clear()
            await streams.changed.wait()
    for _ in range(50):
        await asyncio.sleep(0)


async def test_streams_ahead_are_bounded_by_bytes_together() -> None:
    streams = Streams([1, 100, 100, 100])
    # Items of 10 bytes; 25 bytes ahead: stream 1 reads 3 items (30 >= 25), then no stream ahead
    # reads again, however many items their queues could hold.
    fetch = ordered_fetch(4, streams.open, concurrency=4, buffer=50, max_bytes=25, size=lambda _: 10)
    assert await anext(fetch) == (0, (0, 0))
    await _settle(streams, lambda: sum(streams.produced[1:]) >= 3)
    ahead = sum(streams.produced[1:])
    assert 3 <= ahead <= 3 + 2  # the limit, passed by at most one item per other stream ahead
    # Stream 0 ends: stream 1 is consumed now, its bytes no longer count, so it reads on and the
    # others may fill the room it left.
    assert await anext(fetch) == (0, None)
    got = [await anext(fetch) for _ in range(10)]
    assert got == [(1, (1, i)) for i in range(10)]
    await _settle(streams, lambda: streams.produced[1] >= 11)
    assert sum(streams.produced[2:]) <= 3 + 1
    assert sum(streams.produced[2:]) >= 3
    await fetch.aclose()
    assert streams.closed == {0, 1, 2, 3}


async def test_the_stream_consumed_reads_on_when_the_bytes_ahead_are_full() -> None:
    # Every item is over the limit on its own: streams ahead read one each and wait, yet every
    # stream, in turn, is read to its end.
    streams = Streams([3, 4, 5, 2, 6])
    fetch = ordered_fetch(5, streams.open, concurrency=3, buffer=2, max_bytes=1, size=lambda _: 1_000)
    async with asyncio.timeout(10):  # a stream waiting for bytes it can never get would hang
        got = [item async for item in fetch]
    expected: list[tuple[int, tuple[int, int] | None]] = []
    for index, size in enumerate(streams.sizes):
        expected += [(index, (index, i)) for i in range(size)] + [(index, None)]
    assert got == expected


async def test_failure_surfaces_in_order_and_closes_everything() -> None:
    streams = Streams([2, 3, 3, 3], fail_at={2: 1})
    seen = []
    with pytest.raises(RuntimeError, match="stream 2 broke"):
        async for item in ordered_fetch(4, streams.open, concurrency=2, buffer=1):
            seen.append(item)
    assert seen[-1] == (2, (2, 0))
    assert (1, None) in seen
    assert streams.closed == set(streams.opened)


async def test_cancelling_the_consumer_stops_fetches() -> None:
    streams = Streams([50, 50, 50])
    got = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(ordered_fetch(3, streams.open, concurrency=3, buffer=1)) as fetch:
            async for _ in fetch:
                got.set()
                await asyncio.Event().wait()  # a stuck consumer

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await got.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert streams.closed == {0, 1, 2}
    assert streams.active == 0


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await anext(ordered_fetch(1, Streams([1]).open, concurrency=0, buffer=1))
    with pytest.raises(ValueError, match="needs size"):
        await anext(ordered_fetch(1, Streams([1]).open, concurrency=1, buffer=1, max_bytes=10))
    with pytest.raises(ValueError, match="at least 1"):
        await anext(
            ordered_fetch(1, Streams([1]).open, concurrency=1, buffer=1, max_bytes=0, size=lambda _: 1)
        )
