"""Ordered, bounded concurrent fetch (in-memory streams; the Flight SQL side is tested elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


class _LibraryStop(BaseException):
    """A BaseException that is neither cancellation nor an interrupt (hypothesis's StopTest is one)."""


async def test_a_stream_raising_a_base_exception_reaches_the_consumer() -> None:
    async def open_stream(index: int) -> AsyncGenerator[int, None]:
        yield index
        if index == 1:
            raise _LibraryStop("stream 1 stopped")

    seen = []
    async with asyncio.timeout(10):  # before the fix the consumer waited for stream 1's end forever
        with pytest.raises(_LibraryStop, match="stream 1 stopped"):
            async for item in ordered_fetch(3, open_stream, concurrency=3, buffer=1):
                seen.append(item)
    assert seen == [(0, 0), (0, None), (1, 1)]


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


class _Sized:
    """Streams of items ``(index, i, size)`` that yield to the loop at random points, and check, as
    each item is read, what the streams read ahead of the one being consumed hold."""

    def __init__(
        self,
        sizes: list[list[int]],
        *,
        buffer: int,
        max_bytes: int,
        rng: random.Random,
        fail_at: tuple[int, int] | None,
    ) -> None:
        self.sizes = sizes
        self.buffer = buffer
        self.max_bytes = max_bytes
        self.rng = rng
        self.fail_at = fail_at
        #: The stream the consumer is on: it has had every item (and the end) of the ones before.
        self.current = 0
        #: Per stream: items and bytes read while it was ahead of ``current``, and its largest item.
        self.items_ahead = [0] * len(sizes)
        self.bytes_ahead = [0] * len(sizes)
        self.largest = [0] * len(sizes)
        self.opened: list[int] = []
        self.closed: set[int] = set()
        self.active = 0
        self.max_active = 0

    async def _yield(self) -> None:
        for _ in range(self.rng.randrange(4)):
            await asyncio.sleep(0)

    async def open(self, index: int) -> AsyncGenerator[tuple[int, int, int], None]:
        self.opened.append(index)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for i, size in enumerate(self.sizes[index]):
                await self._yield()  # a read in flight, as real I/O would be
                if self.fail_at == (index, i):
                    raise RuntimeError(f"stream {index} broke")
                if index > self.current:
                    self.items_ahead[index] += 1
                    self.bytes_ahead[index] += size
                    self.largest[index] = max(self.largest[index], size)
                    ahead = range(self.current + 1, len(self.sizes))
                    # Queued, plus one in hand, per stream ahead.
                    assert self.items_ahead[index] <= self.buffer + 1
                    # Under the limit when each read began: over it by at most one item per stream.
                    over = sum(self.largest[j] for j in ahead)
                    assert sum(self.bytes_ahead[j] for j in ahead) <= self.max_bytes - 1 + over
                yield index, i, size
        finally:
            self.active -= 1
            self.closed.add(index)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.lists(st.integers(0, 40), max_size=8), min_size=1, max_size=6),
    concurrency=st.integers(1, 5),
    buffer=st.integers(1, 4),
    max_bytes=st.integers(1, 100),
    seed=st.integers(0, 2**32 - 1),
    fail=st.none() | st.tuples(st.integers(0, 5), st.integers(0, 7)),
    stop_after=st.none() | st.integers(1, 40),
)
def test_any_sizes_keep_order_completeness_and_the_bytes_limit(
    *,
    sizes: list[list[int]],
    concurrency: int,
    buffer: int,
    max_bytes: int,
    seed: int,
    fail: tuple[int, int] | None,
    stop_after: int | None,
) -> None:
    fail_at = fail if fail is not None and fail[0] < len(sizes) and fail[1] < len(sizes[fail[0]]) else None
    expected: list[tuple[int, tuple[int, int, int] | None]] = []
    for index, items in enumerate(sizes):
        if fail_at is not None and fail_at[0] == index:
            expected += [(index, (index, i, s)) for i, s in enumerate(items[: fail_at[1]])]
            break
        expected += [(index, (index, i, s)) for i, s in enumerate(items)] + [(index, None)]
    if stop_after is not None and stop_after < len(expected):
        expected = expected[:stop_after]
        fail_at = None  # stopped before any failure surfaces
    else:
        stop_after = None

    # A Random of our own, not hypothesis' randoms(): those raise a BaseException (StopTest) when the
    # example runs out of data, which would end a pump without a word.
    rng = random.Random(seed)

    async def run() -> None:
        streams = _Sized(sizes, buffer=buffer, max_bytes=max_bytes, rng=rng, fail_at=fail_at)
        fetch = ordered_fetch(
            len(sizes),
            streams.open,
            concurrency=concurrency,
            buffer=buffer,
            max_bytes=max_bytes,
            size=lambda item: item[2],
        )
        got: list[tuple[int, tuple[int, int, int] | None]] = []
        async with asyncio.timeout(10) as deadline:  # a stall fails instead of hanging
            try:
                async for index, item in fetch:
                    got.append((index, item))
                    if item is None:
                        streams.current = index + 1
                    if len(got) == stop_after:
                        break
                    for _ in range(rng.randrange(3)):  # a consumer busy for a while
                        await asyncio.sleep(0)
            except RuntimeError as exc:
                assert fail_at is not None and str(exc) == f"stream {fail_at[0]} broke"
            else:
                assert fail_at is None
            finally:
                await fetch.aclose()
        assert not deadline.expired()  # even if the cancellation it sent was swallowed
        assert got == expected
        assert streams.max_active <= concurrency
        assert streams.closed == set(streams.opened)
        assert streams.active == 0

    asyncio.run(run())


async def test_a_stream_ahead_opens_while_those_further_ahead_hold_the_bytes() -> None:
    # Stream 1 is slow to answer; stream 2 fills the bytes ahead meanwhile. Stream 3, started when
    # stream 1's turn comes, must still send its query and read its first item (read ahead is there
    # to hide a stream's start), not wait until stream 2's bytes go.
    answer = asyncio.Event()
    opened: list[int] = []
    read = [0, 0, 0, 0]
    changed = asyncio.Event()

    async def open_stream(index: int) -> AsyncGenerator[int, None]:
        opened.append(index)
        changed.set()
        if index == 1:
            await answer.wait()
        for i in range(1 if index == 0 else 10):
            read[index] += 1
            changed.set()
            yield i
            await asyncio.sleep(0)

    fetch = ordered_fetch(4, open_stream, concurrency=3, buffer=10, max_bytes=25, size=lambda _: 10)
    assert await anext(fetch) == (0, 0)
    async with asyncio.timeout(5):
        while read[2] < 3:
            changed.clear()
            await changed.wait()
    assert await anext(fetch) == (0, None)
    waiting = asyncio.create_task(anext(fetch))  # stream 1's turn: it has nothing yet
    async with asyncio.timeout(5):
        while read[3] < 1:
            changed.clear()
            await changed.wait()
    for _ in range(50):
        await asyncio.sleep(0)
    assert read[3] == 1  # its first item only: stream 2 still holds the bytes ahead
    assert read[2] == 3
    answer.set()
    assert await waiting == (1, 0)
    await fetch.aclose()


async def test_a_stream_becoming_current_gives_its_bytes_back_to_those_ahead() -> None:
    streams = Streams([1, 3, 100])
    fetch = ordered_fetch(3, streams.open, concurrency=3, buffer=50, max_bytes=25, size=lambda _: 10)
    assert await anext(fetch) == (0, (0, 0))
    await _settle(streams, lambda: streams.produced[1] >= 1 and sum(streams.produced[1:]) >= 3)
    assert streams.produced[2] <= 2  # stream 1 holds 10 bytes or more of the 25
    assert await anext(fetch) == (0, None)
    assert await anext(fetch) == (1, (1, 0))
    # Stream 1 is consumed now: its bytes count no more, so stream 2 alone may hold 30 (it would
    # stay under 3 items if they still counted).
    await _settle(streams, lambda: streams.produced[2] >= 3)
    assert streams.produced[2] == 3
    await fetch.aclose()
    assert streams.closed == {0, 1, 2}
