"""KEDA's redis-streams rules applied to every autoscaling render of the chart.

The stream figures come from a real redis-server driven through the worker's own group creation and
acknowledgement (``ensure_group``; XACK + XDEL in one transaction) and the XREADGROUP a subscriber
issues: so XLEN = waiting + in flight, XPENDING = in flight, lag = waiting, as measured. Each render's
triggers are read with KEDA's selection rules (tests/deploy/keda.py) and must, in every state:
wake the workload when work waits, keep a replica per ``config.concurrency`` jobs in flight (running,
or released by a stopping worker for another to reclaim), and scale to zero only when idle.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import pytest
from redis.asyncio import Redis

from contracts.keys import Keys
from tests.deploy.keda import Query, StreamFigures, read_trigger, replicas
from tests.deploy.support import production_values, render
from tests.support.redis_server import RedisServer
from worker.service.app import ensure_group
from worker.service.finish import _ack_and_delete

pytestmark = pytest.mark.redis


@dataclass(frozen=True)
class State:
    """A moment of the request stream: what Redis reports, and the work it stands for."""

    name: str
    figures: StreamFigures
    waiting: int
    in_flight: int


async def _figures(redis: Redis, keys: Keys) -> StreamFigures:
    xlen = int(await redis.xlen(keys.requests))
    groups = {g["name"].decode(): g for g in await redis.xinfo_groups(keys.requests)}
    if keys.group not in groups:
        return StreamFigures(xlen, None, None)
    pending = int((await redis.xpending(keys.requests, keys.group))["pending"])
    return StreamFigures(xlen, pending, int(groups[keys.group]["lag"]))


async def _walk_the_stream(url: str) -> list[State]:
    keys = Keys("traces")
    redis = Redis.from_url(url)
    states: list[State] = []
    delivered: list[str] = []

    async def snap(name: str, waiting: int) -> None:
        states.append(State(name, await _figures(redis, keys), waiting, len(delivered)))

    async def deliver(count: int) -> None:
        # What the worker's subscriber does: XREADGROUP ... STREAMS <requests> >
        got: Any = await redis.xreadgroup(keys.group, "worker-a", {keys.requests: ">"}, count=count)
        delivered.extend(entry_id.decode() for entry_id, _ in got[0][1])

    async def finish(entry_id: str) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            _ack_and_delete(pipe, keys, entry_id)  # the worker's XACK + XDEL of an answered request
            await pipe.execute()
        delivered.remove(entry_id)

    try:
        for _ in range(3):
            await redis.xadd(keys.requests, {"request": "{}"})
        await snap("3 requests before any worker ever started (no group yet)", waiting=3)
        await ensure_group(redis, keys.requests, keys.group)
        await snap("group created, 3 waiting", waiting=3)
        await deliver(2)
        await snap("2 running, 1 waiting", waiting=1)
        await finish(delivered[0])
        await snap("1 done, 1 running, 1 waiting", waiting=1)
        await deliver(1)
        # A worker stopped by SIGTERM past its drain releases its job: the entry stays pending.
        await snap("2 in flight (running or released for reclaim), none waiting", waiting=0)
        for _ in range(40):
            await redis.xadd(keys.requests, {"request": "{}"})
        await snap("40 waiting behind 2 in flight", waiting=40)
        await deliver(40)
        await snap("42 in flight, none waiting", waiting=0)
        for entry_id in list(delivered):
            await finish(entry_id)
        await snap("all answered", waiting=0)
    finally:
        await redis.aclose()
    return states


@pytest.fixture(scope="module")
def states() -> Iterator[list[State]]:
    server = RedisServer().start()
    try:
        yield asyncio.run(_walk_the_stream(server.url))
    finally:
        server.close()


def test_the_stream_figures_are_waiting_plus_in_flight(states: list[State]) -> None:
    # The facts the chart's triggers rest on, as the real Redis reports them.
    for s in states:
        assert s.figures.xlen == s.waiting + s.in_flight, s.name
        if s.figures.pending is not None:
            assert (s.figures.pending, s.figures.lag) == (s.in_flight, s.waiting), s.name
    assert len({s.name for s in states}) == len(states) == 8


def _problems(spec: dict[str, Any], concurrency: int, activation: int, states: list[State]) -> list[str]:
    """Every way this ScaledObject spec fails the workload, state by state (empty when it never does)."""
    problems: list[str] = []
    low, high = int(spec.get("minReplicaCount", 0)), int(spec.get("maxReplicaCount", 100))
    count = {s.name: replicas(spec, s.figures) for s in states}
    for s in states:
        n = count[s.name]
        if s.waiting > activation and n < 1:
            problems.append(f"{s.name}: nothing wakes the workload ({n} replicas)")
        holding = min(high, math.ceil(s.in_flight / concurrency))
        if n < holding:
            problems.append(f"{s.name}: {n} replicas for {s.in_flight} jobs in flight (need {holding})")
        if low == 0 and s.waiting == 0 and s.in_flight == 0 and n != 0:
            problems.append(f"{s.name}: idle but {n} replicas (no scale to zero)")
    quiet = count["2 in flight (running or released for reclaim), none waiting"]
    busy = count["40 waiting behind 2 in flight"]
    if busy <= quiet < high:
        problems.append(f"40 waiting requests add no replica ({quiet} -> {busy})")
    return problems


S3 = {"blobUrl": "s3://traces/worker"}


def _values(metric: str, min_replicas: int, **keda: Any) -> dict[str, Any]:
    return {
        "config": S3,
        "autoscaling": {
            "enabled": True,
            "minReplicas": min_replicas,
            "keda": {"metric": metric, **keda},
        },
    }


RENDERS: dict[str, dict[str, Any]] = {
    "streamLength, scale to zero": _values("streamLength", 0),
    "streamLength, min 1": _values("streamLength", 1),
    "lag, scale to zero": _values("lag", 0),
    "lag, min 1": _values("lag", 1),
    "lag, scale to zero, wakes above 3": _values("lag", 0, activationTarget=3),
    "streamLength, target 10, concurrency 4": {
        **_values("streamLength", 0, target=10),
        "config": {**S3, "concurrency": 4},
    },
    "production values": production_values(),
    "Redis Cluster, lag, scale to zero": {
        **_values("lag", 0),
        "config": {**S3, "redisCluster": True},
    },
    "Redis Cluster, streamLength, min 1": {
        **_values("streamLength", 1, redisAddresses=["node-0:6379", "node-1:6379"]),
        "config": {**S3, "redisCluster": True},
    },
}


@pytest.mark.parametrize("values", list(RENDERS.values()), ids=list(RENDERS))
def test_every_autoscaling_render_wakes_on_waiting_work_and_keeps_running_jobs(
    values: dict[str, Any], states: list[State]
) -> None:
    m = render(values)
    spec = m.one("ScaledObject")["spec"]
    concurrency = int(m.one("ConfigMap")["data"]["TRACE_WORKER_WORKER_CONCURRENCY"])
    activation = int(values["autoscaling"]["keda"].get("activationTarget", 0))
    kind = "redis-cluster-streams" if values["config"].get("redisCluster") else "redis-streams"
    assert all(t["type"] == kind for t in spec["triggers"])
    assert _problems(spec, concurrency, activation, states) == []
    # One trigger counts the jobs in flight, one replica per config.concurrency of them.
    queries = [read_trigger(t["metadata"], kind) for t in spec["triggers"]]
    assert any(q.query is Query.XPENDING and q.target == concurrency for q in queries)


def test_the_check_catches_the_triggers_that_strand_work(states: list[State]) -> None:
    # The shapes the chart rendered before (issue 18): the check above must reject both.
    base = {"address": "redis:6379", "stream": "traces:requests", "consumerGroup": "traces:workers"}
    lag_only = {
        "minReplicaCount": 0,
        "triggers": [{"metadata": {**base, "lagCount": "5", "activationLagCount": "0"}}],
    }
    problems = _problems(lag_only, 2, 0, states)
    assert any("jobs in flight" in p and "released" in p for p in problems), problems
    length_in_group = {"minReplicaCount": 0, "triggers": [{"metadata": {**base, "streamLength": "5"}}]}
    problems = _problems(length_in_group, 2, 0, states)  # consumerGroup set: KEDA reads XPENDING
    assert any(p.startswith("group created, 3 waiting: nothing wakes") for p in problems), problems
    with pytest.raises(ValueError, match="activationStreamLength"):
        read_trigger({**base, "streamLength": "5", "activationStreamLength": "0"})


def test_stream_length_takes_no_activation_threshold() -> None:
    # KEDA reads no activation for XLEN in older releases, and XLEN counts running jobs: refused.
    with pytest.raises(helm.HelmRenderError, match="activationTarget applies to metric lag only"):
        render(_values("streamLength", 0, activationTarget=2))


def test_scale_to_zero_needs_keda() -> None:
    values = _values("lag", 0)
    values["autoscaling"]["keda"]["enabled"] = False
    values["autoscaling"]["hpa"] = {"metricName": "redis_stream_length"}
    with pytest.raises(helm.HelmRenderError, match="needs KEDA"):
        render(values)
    with pytest.raises(helm.HelmRenderError, match="must not exceed"):
        render({"config": S3, "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})


def test_pending_entries_alone_is_no_longer_a_metric() -> None:
    # XPENDING alone never wakes from zero and never sees waiting work.
    with pytest.raises(helm.HelmValuesError, match="/autoscaling/keda/metric"):
        render(_values("pendingEntries", 1))
