"""Client fixtures: a private redis-server, a client on it, and the scripted worker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from contracts import Keys
from contracts.client import TraceClient
from tests.client.scripted import ScriptedWorker
from tests.support.redis_server import RedisServer
from tests.support.s3 import moto_s3, s3_bucket  # noqa: F401 - fixtures
from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[TraceClient]:
    async with TraceClient(redis_server.url, "t", reconnect_timeout_s=20) as c:
        yield c


@pytest.fixture
async def worker(redis_server: RedisServer) -> AsyncIterator[ScriptedWorker]:
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        yield ScriptedWorker(redis, Keys("t"))
    finally:
        await redis.aclose()
