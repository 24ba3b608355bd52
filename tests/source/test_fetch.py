"""Ordered, bounded concurrent fetch (in-memory streams; the Flight SQL side is tested elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

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
