"""A wrong cluster setting is a configuration error (exit status 2, one line, no traceback), not
a Redis outage to retry: the worker and the client commands, each way round (cluster mode on
against a standalone redis-server, off against a real Redis Cluster node)."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from contracts import Keys
from contracts.client import ClientError, ConnectionLost, TraceClient
from tests.cluster.test_cluster_cli import cli
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env

#: Generous: the old behaviour retried for 30 s before failing; the test tells them apart by the
#: exit status and the log, not by time.
WAIT_S = 120.0


def _run_worker(spawn_worker: Spawn, tmp_path: Path, redis_url: str, cluster: bool) -> tuple[int, list[str]]:
    env = worker_env(
        redis_url,
        "grpc://127.0.0.1:1",
        (tmp_path / "traces").as_uri(),
        TRACE_WORKER_REDIS_CLUSTER="true" if cluster else "false",
        TRACE_WORKER_HTTP_HOST="",
    )
    proc = spawn_worker(env)
    try:
        code = proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        code = -1  # still running: the stop at the end of the test reaps it
    log = next(tmp_path.glob("worker-w-*.log")).read_text()
    return code, log.splitlines()


def test_worker_in_cluster_mode_against_a_standalone_redis_exits_2(
    redis_server: RedisServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    code, lines = _run_worker(spawn_worker, tmp_path, redis_server.url, cluster=True)
    assert code == 2, lines
    assert "cluster mode" in lines[0]  # the startup line says so
    assert lines[-1] == (
        f"trace-worker run: bad settings: TRACE_WORKER_REDIS_CLUSTER=true but {redis_server.url} "
        "is not a Redis Cluster node (cluster mode is not enabled)"
    )
    assert not any("Traceback" in line or "redis unavailable" in line for line in lines), lines


def test_worker_without_cluster_mode_against_a_cluster_node_exits_2(
    redis_cluster: RedisCluster, spawn_worker: Spawn, tmp_path: Path
) -> None:
    code, lines = _run_worker(spawn_worker, tmp_path, redis_cluster.url, cluster=False)
    assert code == 2, lines
    assert "cluster mode" not in lines[0]
    assert lines[-1] == (
        f"trace-worker run: bad settings: {redis_cluster.url} is a Redis Cluster node: "
        "set TRACE_WORKER_REDIS_CLUSTER=true"
    )
    assert not any("Traceback" in line or "redis unavailable" in line for line in lines), lines


async def test_client_without_cluster_mode_against_a_cluster_says_so(
    redis_cluster: RedisCluster, prefix: str, tmp_path: Path
) -> None:
    # A job whose keys live on another master than the URL's node: its reads get MOVED replies.
    keys = Keys(prefix)
    entry = redis_cluster.nodes[0]
    ids = (f"j{i}" for i in itertools.count())
    job_id = next(j for j in ids if redis_cluster.node_of(keys.state(j)) != entry)
    result = await cli("status", job_id, "--redis-url", redis_cluster.url, "--prefix", prefix, cwd=tmp_path)
    assert result.code == 2, result
    assert result.err.strip() == (
        "trace-worker status: this Redis is a Redis Cluster node: use --redis-cluster "
        "(TRACE_WORKER_REDIS_CLUSTER=true)"
    )


async def test_client_in_cluster_mode_against_a_standalone_redis_says_so(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    result = await cli("status", "j1", "--redis-url", redis_server.url, "--redis-cluster", cwd=tmp_path)
    assert result.code == 2, result
    assert result.err.strip() == (
        "trace-worker status: not a Redis Cluster node: drop --redis-cluster "
        "(TRACE_WORKER_REDIS_CLUSTER=false)"
    )


async def test_a_bad_cluster_url_is_named_once(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:1/3"
    result = await cli("status", "j1", "--redis-url", url, "--redis-cluster", cwd=tmp_path)
    assert result.code == 2, result
    assert result.err.startswith("trace-worker status: bad Redis URL redis://127.0.0.1:1/3: "), result
    assert result.err.count("bad Redis URL") == 1 and result.err.count("/3") == 1, result


async def test_library_client_in_cluster_mode_against_a_standalone_redis_is_a_client_error(
    redis_server: RedisServer,
) -> None:
    # Not ConnectionLost: retrying cannot help, the node answered that it is not a cluster node.
    client = TraceClient(redis_server.url, cluster=True)
    try:
        with pytest.raises(ClientError, match="not a Redis Cluster node") as raised:
            await client.ping()
        assert not isinstance(raised.value, ConnectionLost)
    finally:
        await client.aclose()
