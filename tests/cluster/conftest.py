"""Redis Cluster fixtures: one real three-master cluster per test module (started and removed by
the fixture); tests keep apart by key prefix."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tests.support.processes import stop_tracked
from tests.support.redis_cluster import RedisCluster
from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three redis-server masters joined by ``redis-cli --cluster create``, shared by a module."""
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def cluster_redis(redis_cluster: RedisCluster) -> AsyncIterator[AsyncRedisCluster]:
    """A redis-py cluster client of the module's cluster (bytes in, bytes out)."""
    client = AsyncRedisCluster.from_url(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test of the session uses (tests share the module's cluster)."""
    return f"c{next(_prefixes)}"


@pytest.fixture(autouse=True)
async def _reap_cli_processes() -> AsyncIterator[None]:
    """Every command-line process a test starts is stopped and reaped when the test ends."""
    yield
    await stop_tracked()
