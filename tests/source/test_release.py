"""Finished ADBC streams are released in groups (the Go driver runs a full collection per release):
together, each from its own thread, after a short wait or once enough wait; everything waiting is
released before a connection closes and by ``aclose``."""

from __future__ import annotations

import threading

import adbc_driver_manager as adbc
import pytest

from contracts.request import SpanTypes
from tests.support.devserver import start_devserver
from tests.support.source import open_source
from worker.devserver import Lake, LakeConfig
from worker.pipeline import TraceSpec, generate_trace
from worker.source import flightsql
from worker.source.flightsql import _Releaser

QUERIES_PER_TRACE = 3  # process and threads, process_spans (a small process), async events


def test_a_group_is_released_at_once_from_several_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flightsql, "_RELEASE_DELAY_S", 60.0)
    monkeypatch.setattr(flightsql, "_RELEASE_MAX_PENDING", 5)
    # Each release waits for all the others: released one after another, the barrier breaks.
    together = threading.Barrier(5, timeout=30)
    done = threading.Semaphore(0)
    threads: set[str] = set()

    def release() -> None:
        threads.add(threading.current_thread().name)
        together.wait()
        done.release()

    releaser = _Releaser()
    try:
        for _ in range(5):  # the fifth reaches the cap: no wait for the delay
            releaser.put(release)
        for _ in range(5):
            assert done.acquire(timeout=30), "a group was not released once the cap was reached"
        assert len(threads) == 5
        assert releaser.pending == 0
    finally:
        releaser.close()


def test_flush_releases_what_waits_and_failures_do_not_stop_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flightsql, "_RELEASE_DELAY_S", 60.0)
    released: list[int] = []

    def failing() -> None:
        raise adbc.OperationalError("release failed", status_code=adbc.AdbcStatusCode.IO)

    releaser = _Releaser()
    try:
        releaser.put(lambda: released.append(1))
        releaser.put(failing)
        releaser.put(lambda: released.append(2))
        assert releaser.pending == 3
        releaser.flush()
        assert releaser.pending == 0
        assert sorted(released) == [1, 2]
    finally:
        releaser.close()
    releaser.put(lambda: released.append(3))  # closed: released at once
    assert released[-1] == 3


async def test_a_trace_leaves_its_streams_to_the_releaser_and_aclose_releases_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flightsql, "_RELEASE_DELAY_S", 60.0)
    lake = Lake(LakeConfig(seed=5, processes=("small",)))
    p = lake.processes[0]
    with start_devserver(lake) as server:
        async with open_source(server.url, direct_tickets="off") as source:
            spec = TraceSpec(p.process_id, None, None, SpanTypes.BOTH)
            async for _ in generate_trace(source, spec):
                pass
            releaser = source._releaser  # what waits is not public
            # One item per query: its stream(s) and its statement, released in that order.
            assert releaser.pending == QUERIES_PER_TRACE
        assert releaser.pending == 0
        releaser.put(lambda: None)  # stopped: nothing waits any more
        assert releaser.pending == 0
