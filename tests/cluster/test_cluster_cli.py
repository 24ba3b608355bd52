"""`request`, `status`, `jobs` and `cancel` (``python -m worker``) against a Redis Cluster, with
``--redis-cluster`` and with ``TRACE_WORKER_REDIS_CLUSTER=true``; the worker runs in-process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from contracts import JobState, Keys, TraceRequest
from tests.cli.test_client_commands import ROOT, Result
from tests.cluster.test_cluster_service import PID, Harness
from tests.service.support import JobReader, ScriptedGenerator
from tests.support.processes import track
from tests.support.redis_cluster import RedisCluster

WAIT_S = 120.0


async def cli(*args: str, cwd: Path, env_cluster: bool = False) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")}
    env["PYTHONPATH"] = str(ROOT)
    if env_cluster:
        env["TRACE_WORKER_REDIS_CLUSTER"] = "true"
    proc = track(
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", *args, cwd=cwd, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_client_commands_on_a_cluster(
    redis_cluster: RedisCluster, cluster_redis: AsyncRedisCluster, prefix: str, tmp_path: Path
) -> None:
    keys = Keys(prefix)
    where = ["--redis-url", redis_cluster.url, "--prefix", prefix]
    gen = ScriptedGenerator(chunks=3, chunk_size=4096)
    async with Harness(redis_cluster, prefix, gen):
        done = await cli("request", PID, "--job-id", "cli-1", "-o", "out.pftrace", "--quiet",
                         "--redis-cluster", *where, cwd=tmp_path)  # fmt: skip
        assert done.code == 0, done.err
        assert (tmp_path / "out.pftrace").read_bytes() == gen.expected(TraceRequest(process_id=PID))

        status = await cli("status", "cli-1", "--json", *where, cwd=tmp_path, env_cluster=True)
        assert status.code == 0, status.err
        assert json.loads(status.out)["state"] == "succeeded"

        listed = await cli("jobs", "-n", "5", "--redis-cluster", *where, cwd=tmp_path)
        assert listed.code == 0, listed.err
        assert listed.out.splitlines()[1].split()[:2] == ["cli-1", "succeeded"]

        gen.gate = asyncio.Event()  # the next job holds after its first chunk
        queued = await cli("request", PID, "--job-id", "cli-2", "--no-wait", "--redis-cluster", *where,
                           cwd=tmp_path)  # fmt: skip
        assert queued.code == 0, queued.err
        await JobReader(cluster_redis, keys, "cli-2").read_until(lambda e: e.type == "chunk")
        cancelled = await cli("cancel", "cli-2", "--wait", "60", "--redis-cluster", *where, cwd=tmp_path)
        assert cancelled.code == 0, cancelled.err
        assert "job cli-2 ended cancelled" in cancelled.out
        assert await cluster_redis.hget(keys.state("cli-2"), "state") == JobState.CANCELLED.value.encode()


async def test_shell_recipe_with_redis_cli_c(
    redis_cluster: RedisCluster, prefix: str, tmp_path: Path
) -> None:
    """docs/PROTOCOL.md §6's recipe on a cluster: `redis-cli -c` follows the MOVED redirections
    (every command of the recipe names one key)."""
    gen = ScriptedGenerator(chunks=3, chunk_size=64 * 1024)
    node = redis_cluster.nodes[0]
    job_id = next(
        f"sh-{i}" for i in range(1000) if redis_cluster.node_of(Keys(prefix).job(f"sh-{i}")) is not node
    )
    request = json.dumps({"process_id": PID, "job_id": job_id}, separators=(",", ":"))
    env = {
        **os.environ,
        "REDIS": f"{shutil.which('redis-cli')} -c -h 127.0.0.1 -p {node.port}",
        "PREFIX": prefix,
        "TIMEOUT": "120",
    }
    async with Harness(redis_cluster, prefix, gen, chunk_size=64 * 1024):
        proc = track(
            await asyncio.create_subprocess_exec(
                "sh", str(ROOT / "scripts" / "redis-cli-trace.sh"), job_id, request, "sh.pftrace",
                cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, out.decode() + err.decode()
    assert "sh.pftrace verified" in out.decode()
    assert (tmp_path / "sh.pftrace").read_bytes() == gen.expected(TraceRequest(process_id=PID))
