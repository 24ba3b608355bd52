"""Client fixtures: a private redis-server, a client on it, the scripted worker, and the
development Flight SQL server for tests against real worker processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from contracts import Keys
from contracts.client import TraceClient
from tests.client.scripted import ScriptedWorker
from tests.support.devserver import start_devserver
from tests.support.redis_server import RedisServer
from tests.support.s3 import moto_s3, s3_bucket  # noqa: F401 - fixtures
from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture
from worker.devserver import DevServer, Lake, LakeConfig


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    """A small process (quick jobs) and a bigger one (still running when a test intervenes)."""
    lake = Lake(LakeConfig(seed=42, processes=("small", "large"), large_spans=2_000_000))
    with start_devserver(lake) as server:
        yield server


@pytest.fixture
async def client(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[TraceClient]:
    async with TraceClient(redis_server.url, "t", reconnect_timeout_s=20, file_root=tmp_path) as c:
        yield c


@pytest.fixture
async def worker(redis_server: RedisServer) -> AsyncIterator[ScriptedWorker]:
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        yield ScriptedWorker(redis, Keys("t"))
    finally:
        await redis.aclose()
