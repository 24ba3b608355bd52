"""docs/PROTOCOL.md's requester ACL plus its §10 cluster additions, on every master of a real
Redis Cluster: a requester requests, follows, downloads, polls and cancels through
``TraceClient(cluster=True)``, and still cannot write a key the worker owns."""

from __future__ import annotations

import io
import re
import shlex
from typing import Any

import pytest
from redis import Redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoPermissionError

from contracts import JobState, Keys, TraceRequest
from contracts.client import TraceClient
from contracts.events import CancelOutcome
from tests.cluster.test_cluster_service import PID, Harness
from tests.service.support import ScriptedGenerator
from tests.service.test_requester_acl import ROOT, documented_acl
from tests.support.redis_cluster import RedisCluster


def cluster_additions() -> list[str]:
    """The permissions §10 adds for a cluster, as the doc gives them."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    match = re.search(r"\$ redis-cli -p PORT ACL SETUSER requester (.*)\n", text)
    assert match is not None, "PROTOCOL.md §10 lost its cluster ACL line"
    return shlex.split(match.group(1))


async def test_a_requester_with_the_documented_acl_works_on_a_cluster(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    for node in redis_cluster.nodes:
        with Redis(port=node.port) as admin:
            admin.execute_command(*documented_acl(prefix, "pw"), *cluster_additions())
    url = f"redis://requester:pw@127.0.0.1:{redis_cluster.nodes[0].port}/0"
    keys = Keys(prefix)
    gen = ScriptedGenerator(chunks=2)
    async with (
        Harness(redis_cluster, prefix, gen),
        TraceClient(url, prefix, cluster=True, reconnect_timeout_s=20) as client,
    ):
        handle = await client.submit(TraceRequest(process_id=PID, job_id="acl-1"))
        sink = io.BytesIO()
        status = await handle.download(sink, timeout=60)
        assert status.state == JobState.SUCCEEDED and sink.getvalue() == gen.expected(
            TraceRequest(process_id=PID)
        )
        job = client.job("acl-1")
        assert (await job.state()) is not None and (await job.health()).status is not None
        answer = await handle.cancel(timeout=30)
        assert answer is not None and answer.outcome == CancelOutcome.ALREADY_ENDED
        assert [s.job_id for s in await client.recent_jobs(1)] == ["acl-1"]
        attacker = AsyncRedisCluster.from_url(url)
        try:
            moves: list[tuple[Any, ...]] = [
                ("HSET", keys.state("acl-1"), "state", "failed"),
                ("XADD", keys.job("acl-1"), "*", "type", "status"),
                ("XADD", keys.events, "*", "type", "status"),
                ("SET", keys.lock("acl-1"), "me"),
            ]
            for move in moves:
                with pytest.raises(NoPermissionError):
                    await attacker.execute_command(*move)
        finally:
            await attacker.aclose()
