"""The gateway (``TRACE_WORKER_REDIS_CLUSTER=true``) and cancellations on a Redis Cluster: what main
gained beside the cluster work (the gateway's client, connections that never swallow a
cancellation) on a real three-master cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from contracts import TraceRequest
from contracts.client import TraceClient
from tests.client.test_cancellation import cancel_at_every_turn
from tests.cluster.test_cluster_service import PID, Harness
from tests.service.support import ScriptedGenerator
from tests.support.gateway_process import run_gateway
from tests.support.redis_cluster import RedisCluster
from tests.support.worker_process import worker_env
from worker.service.app import redis_client
from worker.service.redis_io import SlotClients
from worker.settings import Settings

WAIT_S = 120.0


async def test_the_gateway_submits_follows_and_downloads_on_a_cluster(
    redis_cluster: RedisCluster, prefix: str, tmp_path: Path
) -> None:
    gen = ScriptedGenerator(chunks=3, chunk_size=4096)
    env = worker_env(
        redis_cluster.url, "grpc://127.0.0.1:9", f"file://{tmp_path}",
        TRACE_WORKER_KEY_PREFIX=prefix, TRACE_WORKER_REDIS_CLUSTER="true",
    )  # fmt: skip
    async with Harness(redis_cluster, prefix, gen):
        with run_gateway(env) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=WAIT_S) as http:
                accepted = await http.post("/api/traces", json={"process_id": PID, "job_id": "gw-1"})
                assert accepted.status_code == 202, accepted.text
                job = accepted.json()
                states = []
                async with http.stream("GET", job["links"]["events"]) as events:
                    async for line in events.aiter_lines():
                        if line.startswith("data:"):
                            data: Any = json.loads(line.removeprefix("data:"))
                            if data.get("type") == "status":
                                states.append(data["state"])
                assert states[-1] == "succeeded", states
                trace = await http.get(job["links"]["trace"])
                assert trace.status_code == 200
                assert trace.content == gen.expected(TraceRequest(process_id=PID))
                recent = (await http.get("/api/traces")).json()["items"]
                assert [item["job_id"] for item in recent][:1] == ["gw-1"]


async def test_a_cancelled_cluster_command_raises_and_leaves_the_connection_usable(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    """The client's and the worker's cluster connections re-raise a cancellation redis-py's send
    swallowed (contracts.redis_cancel), as on one server (tests/client/test_cancellation.py); so do
    the worker's per-master transaction clients (SlotClients). Single commands: a cluster pipeline
    sends each master's commands in a task of its own, whose cancellation its caller sees anyway."""
    settings = Settings(_env_file=None, redis_url=redis_cluster.url, redis_cluster=True)
    worker_redis = redis_client(settings)
    assert isinstance(worker_redis, AsyncRedisCluster)
    slots = SlotClients(worker_redis)
    key, hash_key = f"{prefix}:{{k}}", f"{prefix}:{{k}}:h"
    async with TraceClient(redis_cluster.url, prefix, cluster=True) as client:
        try:
            for redis in (client.redis, worker_redis, await slots.client_for(key)):
                await redis.set(key, "v")

                async def command(_n: int, redis: Any = redis) -> object:
                    await redis.hset(hash_key, "f", "x")
                    return await redis.get(key)

                async def replies_match(_n: int, redis: Any = redis) -> None:
                    # A connection whose reply was left unread would answer the next command with it.
                    assert await redis.get(key) == b"v"
                    assert await redis.hgetall(hash_key) in ({}, {b"f": b"x"})

                assert await cancel_at_every_turn(command, replies_match) >= 3
        finally:
            await slots.aclose()
            await worker_redis.aclose()
