"""TRACE_WORKER_REDIS_CLUSTER: read from the environment, refused with a database other than 0, and
choosing the cluster clients (FastStream's RedisClusterBroker, redis-py's RedisCluster)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faststream.redis import RedisBroker, RedisClusterBroker
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tests.service.support import ScriptedGenerator
from worker.service.app import Service, redis_client
from worker.settings import Settings, SettingsError, load_settings
from worker.sinks.blob.memory import MemoryBlobStore


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TRACE_WORKER_"):
            monkeypatch.delenv(name)
    return tmp_path


def test_the_setting_is_read_and_database_0_is_required(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().redis_cluster is False
    monkeypatch.setenv("TRACE_WORKER_REDIS_CLUSTER", "true")
    monkeypatch.setenv("TRACE_WORKER_REDIS_URL", "redis://node-1:7000")
    assert load_settings().redis_cluster is True
    monkeypatch.setenv("TRACE_WORKER_REDIS_URL", "redis://node-1:7000/3")
    with pytest.raises(SettingsError, match="TRACE_WORKER_REDIS_URL names database 3, but a Redis Cluster"):
        load_settings()
    monkeypatch.setenv("TRACE_WORKER_REDIS_CLUSTER", "false")
    assert load_settings().redis_url.endswith("/3")  # one server may use any database


@pytest.mark.parametrize("cluster", [False, True])
async def test_the_setting_picks_the_clients(cluster: bool) -> None:
    settings = Settings(
        _env_file=None, redis_url="redis://127.0.0.1:7000/0", redis_cluster=cluster, http_host=""
    )
    client = redis_client(settings)
    assert isinstance(client, RedisCluster if cluster else Redis)
    await client.aclose()
    service = Service(settings, generator=ScriptedGenerator(), store=MemoryBlobStore())
    assert type(service.broker) is (RedisClusterBroker if cluster else RedisBroker)
    assert (service.rt.slots is not None) is cluster
    await service.rt.redis.aclose()
