"""The chart with ``config.redisCluster``: the worker's setting, KEDA's ``redis-cluster-streams``
triggers (nodes as ``addresses``, no database), and the combinations it refuses."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from contracts.keys import Keys
from tests.deploy.keda import CLUSTER_PARAMETERS, Query, read_trigger
from tests.deploy.support import render
from worker.settings import Settings

S3 = {"blobUrl": "s3://traces/worker"}


def _cluster(**keda: Any) -> dict[str, Any]:
    return {
        "config": {
            "redisUrl": "redis://redis-cluster:6379/0",
            "redisCluster": True,
            "keyPrefix": "perf",
            **S3,
        },
        "autoscaling": {"enabled": True, "keda": keda},
    }


def test_the_worker_reads_a_cluster_and_keda_gets_cluster_triggers() -> None:
    m = render(_cluster())
    data = m.one("ConfigMap")["data"]
    assert data["TRACE_WORKER_REDIS_CLUSTER"] == "true"
    settings = Settings(
        _env_file=None, **{k.removeprefix("TRACE_WORKER_").lower(): v for k, v in data.items()}
    )
    assert settings.redis_cluster and settings.redis_url == "redis://redis-cluster:6379/0"
    triggers = m.one("ScaledObject")["spec"]["triggers"]
    assert [t["type"] for t in triggers] == ["redis-cluster-streams"] * 2
    keys = Keys("perf")
    for t in triggers:
        meta = t["metadata"]
        assert set(meta) <= CLUSTER_PARAMETERS
        assert meta["addresses"] == "redis-cluster:6379"  # KEDA discovers the other nodes
        assert "address" not in meta and "databaseIndex" not in meta
        assert meta["stream"] == keys.requests and meta["enableTLS"] == "false"
    waiting, in_flight = (read_trigger(t["metadata"], t["type"]) for t in triggers)
    assert (waiting.query, waiting.target) == (Query.XLEN, 2)  # config.concurrency
    assert (in_flight.query, in_flight.target) == (Query.XPENDING, 2)
    assert triggers[1]["metadata"]["consumerGroup"] == keys.group


def test_seed_nodes_tls_and_password() -> None:
    values = _cluster(metric="lag", redisAddresses=["node-0.rc:6379", "node-1.rc:6379", "node-2.rc:6379"])
    values["config"]["redisUrl"] = "rediss://node-0.rc:6379/0"
    values["config"]["redisUsername"] = "trace-worker"
    values["secret"] = {"redisPassword": "pw"}
    m = render(values)
    triggers = m.one("ScaledObject")["spec"]["triggers"]
    for t in triggers:
        assert t["metadata"]["addresses"] == "node-0.rc:6379,node-1.rc:6379,node-2.rc:6379"
        assert t["metadata"]["enableTLS"] == "true"
        assert t["metadata"]["username"] == "trace-worker"  # the ACL user, as on one server
        assert set(t["metadata"]) <= CLUSTER_PARAMETERS
        assert t["authenticationRef"] == {"name": m.one("TriggerAuthentication")["metadata"]["name"]}
    assert read_trigger(triggers[0]["metadata"], triggers[0]["type"]).query is Query.LAG
    refs = m.one("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert [r["parameter"] for r in refs] == ["password"]


def test_one_server_keeps_redis_streams() -> None:
    m = render({"config": S3, "autoscaling": {"enabled": True}})
    assert m.one("ConfigMap")["data"]["TRACE_WORKER_REDIS_CLUSTER"] == "false"
    assert {t["type"] for t in m.one("ScaledObject")["spec"]["triggers"]} == {"redis-streams"}


def test_refused_with_another_database() -> None:
    values = _cluster()
    values["config"]["redisUrl"] = "redis://redis-cluster:6379/2"
    with pytest.raises(helm.HelmRenderError, match=r"config\.redisCluster needs database 0"):
        render(values)
    with pytest.raises(helm.HelmValuesError, match="redisAddresses"):
        render(_cluster(redisAddresses=["no-port"]))


def test_the_gateway_reads_the_cluster_too() -> None:
    m = render({**_cluster(), "gateway": {"enabled": True}})
    configmap = m.one("ConfigMap")["metadata"]["name"]
    assert m.one("ConfigMap")["data"]["TRACE_WORKER_REDIS_CLUSTER"] == "true"
    gateway = next(d for d in m.all("Deployment") if d["metadata"]["name"].endswith("gateway"))
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": configmap}} in container["envFrom"]
