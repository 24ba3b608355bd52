"""Shared fixtures. Real servers on free loopback ports; no test depends on a service the machine runs,
and no test leaves a process running (tests/support/leaks.py)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests.support import leaks
from tests.support.redis_server import RedisServer

leaks.install_marker()


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail the test that leaves a process it started running (killing it first), so the leak is
    reported here and cannot time out, or warn in, a later test."""
    before = leaks.pids()
    yield
    leaked = leaks.new_marked(before)
    if leaked:
        leaks.kill_all(leaked)
        gc.collect()  # a dropped Popen/transport warns now, in this test
        pytest.fail(
            "processes left running (killed): " + "; ".join(f"{p} {c}" for p, c in leaked.items()),
            pytrace=False,
        )


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """An asyncio client of the test's redis-server."""
    client = Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()
