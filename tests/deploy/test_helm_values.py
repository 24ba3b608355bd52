"""values.schema.json rejects bad values (through Helm's own validation); README.md lists every value."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.support import CHART, load_chart, production_values, render

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicas": 3}, "additional properties 'replicas'"),
    ("typo in a nested key", {"config": {"redisURL": "redis://r:6379"}}, "additional properties 'redisURL'"),
    ("redis url scheme", {"config": {"redisUrl": "http://redis:6379"}}, "/config/redisUrl"),
    ("flight sql scheme", {"config": {"flightsqlUrl": "tcp://mm:50051"}}, "/config/flightsqlUrl"),
    ("blob url scheme", {"config": {"blobUrl": "gs://bucket/x"}}, "/config/blobUrl"),
    ("key prefix charset", {"config": {"keyPrefix": "a b"}}, "/config/keyPrefix"),
    ("zero concurrency", {"config": {"concurrency": 0}}, "/config/concurrency"),
    ("concurrency as text", {"config": {"concurrency": "four"}}, "/config/concurrency"),
    ("zero drain timeout", {"config": {"drainTimeoutSeconds": 0}}, "/config/drainTimeoutSeconds"),
    ("privileged http port", {"config": {"httpPort": 80}}, "/config/httpPort"),
    ("extra setting outside the prefix", {"config": {"extra": {"PATH": "/x"}}}, "'PATH' does not match"),
    ("writable root", {"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext"),
    ("root user allowed", {"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext"),
    ("capabilities kept", {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, "/securityContext"),
    ("capability added", {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}, "/securityContext"),
    ("escalation allowed", {"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext"),
    ("keda metric", {"autoscaling": {"keda": {"metric": "cpu"}}}, "/autoscaling/keda/metric"),
    ("keda target zero", {"autoscaling": {"keda": {"target": 0}}}, "/autoscaling/keda/target"),
    ("negative min replicas", {"autoscaling": {"minReplicas": -1}}, "/autoscaling/minReplicas"),
    ("redis address without port", {"autoscaling": {"keda": {"redisAddress": "redis"}}}, "redisAddress"),
    ("pdb percentage", {"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget"),
    ("pull policy", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ("image digest", {"image": {"digest": "latest"}}, "/image/digest"),
    ("service type", {"service": {"type": "Ingress"}}, "/service/type"),
    ("scrape interval", {"metrics": {"serviceMonitor": {"interval": "soon"}}}, "interval"),
    (
        "both CA sources",
        {"flightsql": {"tlsCa": {"secretName": "a", "configMapName": "b"}}},
        "/flightsql/tlsCa",
    ),
    ("probe period", {"probes": {"readiness": {"periodSeconds": 0}}}, "/probes/readiness/periodSeconds"),
    ("log format", {"config": {"logFormat": "xml"}}, "/config/logFormat"),
    (
        "password in the redis url",
        {"config": {"redisUrl": "redis://:hunter2@redis:6379/0"}},
        "/config/redisUrl",
    ),
    (
        "user and password in the redis url",
        {"config": {"redisUrl": "rediss://app:pw@redis:6380"}},
        "/config/redisUrl",
    ),
    ("user in the redis url", {"config": {"redisUrl": "redis://app@redis:6379"}}, "/config/redisUrl"),
    (
        "password in the redis url's query",
        {"config": {"redisUrl": "redis://redis:6379/0?password=pw"}},
        "/config/redisUrl",
    ),
    (
        "user in the redis url's query, any case",
        {"config": {"redisUrl": "rediss://redis:6380/0?ssl_cert_reqs=none&UserName=app"}},
        "/config/redisUrl",
    ),
    (
        "extraEnv repeats the http port",
        {"extraEnv": [{"name": "TRACE_WORKER_HTTP_PORT", "value": "9999"}]},
        "/extraEnv/0/name",
    ),
    (
        "extra repeats the http port",
        {"config": {"extra": {"TRACE_WORKER_HTTP_PORT": 9999}}},
        "propertyName 'TRACE_WORKER_HTTP_PORT'",
    ),
    ("blank in the redis user name", {"config": {"redisUsername": "app worker"}}, "/config/redisUsername"),
    (
        "extra repeats the redis user name",
        {"config": {"extra": {"TRACE_WORKER_REDIS_USERNAME": "app"}}},
        "propertyName 'TRACE_WORKER_REDIS_USERNAME'",
    ),
    (
        "extra carries a credential",
        {"config": {"extra": {"TRACE_WORKER_REDIS_PASSWORD": "x"}}},
        "propertyName 'TRACE_WORKER_REDIS_PASSWORD'",
    ),
    (
        "keda metric pending entries alone",
        {"autoscaling": {"keda": {"metric": "pendingEntries"}}},
        "/autoscaling/keda/metric",
    ),
    (
        "pdb eviction policy",
        {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "Never"}},
        "/podDisruptionBudget",
    ),
    ("readiness shorter than readyz", {"probes": {"readiness": {"timeoutSeconds": 6}}}, "timeoutSeconds"),
]


@pytest.mark.parametrize(("values", "where"), [(v, w) for _, v, w in INVALID], ids=[i for i, _, _ in INVALID])
def test_schema_rejects_invalid_values(values: dict[str, Any], where: str) -> None:
    with load_chart() as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert where in str(caught.value)
    # An install validates the same way: nothing renders.
    with pytest.raises(helm.HelmValuesError):
        render(values)


@pytest.mark.parametrize("values", [{}, production_values()], ids=["default", "production"])
def test_schema_accepts_the_shipped_values(values: dict[str, Any]) -> None:
    with load_chart() as chart:
        chart.validate_schema(values)


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis-master:6379/0",
        "rediss://r.data.svc:6380",
        "redis://[::1]:6379/2",
        "redis://r:6379?db=3",
        "rediss://r:6380/0?ssl_cert_reqs=none",
        "redis://r:6379/0?client_name=passwordless",
    ],
)
def test_schema_accepts_redis_urls_without_credentials(url: str) -> None:
    with load_chart() as chart:
        chart.validate_schema({"config": {"redisUrl": url}})
    assert render({"config": {"redisUrl": url}}).one("ConfigMap")["data"]["TRACE_WORKER_REDIS_URL"] == url


def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


def _default_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def _paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml's leaves; maps the schema leaves open (free-form) count as one leaf."""
    out: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and value and "properties" in sub:
            out += _paths(value, sub, f"{path}.")
        else:
            out.append(path)
    return out


def test_schema_covers_every_value() -> None:
    assert set(_default_values()) == set(_schema()["properties"])

    def walk(values: dict[str, Any], schema: dict[str, Any], prefix: str) -> None:
        props = schema.get("properties")
        if props is None:
            return
        assert set(values) <= set(props), f"{prefix}: not in the schema: {set(values) - set(props)}"
        for key, value in values.items():
            if isinstance(value, dict) and value:
                walk(value, props[key], f"{prefix}{key}.")

    walk(_default_values(), _schema(), "")


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    listed = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.MULTILINE))
    paths = _paths(_default_values(), _schema())
    assert len(paths) > 50
    assert sorted(set(paths) - listed) == []
    assert sorted(listed - set(paths)) == []  # and nothing that no longer exists


def test_config_extra_and_extra_env_refuse_exactly_the_settings_the_chart_renders(tmp_path: Path) -> None:
    everything = {
        "config": {"redisUsername": "app"},
        "flightsql": {"tlsCa": {"secretName": "mm-ca"}},
        "s3": {"endpoint": "http://minio:9000", "region": "eu-west-1", "allowHttp": True},
        "secret": {
            "flightsqlToken": "t",
            "redisPassword": "p",
            "s3AccessKeyId": "a",
            "s3SecretAccessKey": "s",
        },
    }
    m = render(everything)
    rendered = set(m.one("ConfigMap")["data"]) | set(m.env())
    schema = _schema()["properties"]
    refused = set(schema["config"]["properties"]["extra"]["propertyNames"]["not"]["enum"])
    assert refused == rendered
    refused_env = set(schema["extraEnv"]["items"]["properties"]["name"]["not"]["enum"])
    assert refused_env == rendered
    with load_chart() as chart:
        for name in sorted(rendered):
            with pytest.raises(helm.HelmValuesError, match=f"invalid propertyName '{name}'"):
                chart.validate_schema({"config": {"extra": {name: "1"}}})
            with pytest.raises(helm.HelmValuesError, match="/extraEnv/0/name"):
                chart.validate_schema({"extraEnv": [{"name": name, "value": "1"}]})
        chart.validate_schema({"config": {"extra": {"TRACE_WORKER_FLIGHTSQL_CONCURRENCY": "8"}}})
    extra_env = [{"name": "TRACE_WORKER_FLIGHTSQL_CONCURRENCY", "value": "8"}, {"name": "TZ", "value": "UTC"}]
    assert {"TRACE_WORKER_FLIGHTSQL_CONCURRENCY", "TZ"} <= set(render({"extraEnv": extra_env}).env())
    # The template refuses them too (for installs that skip the schema): the chart without its schema.
    unchecked = tmp_path / "trace-worker"
    shutil.copytree(CHART, unchecked)
    (unchecked / "values.schema.json").unlink()
    chart = helm.Chart.load(unchecked)
    try:
        with pytest.raises(helm.HelmRenderError, match=r"config\.extra must not set TRACE_WORKER_HTTP_PORT"):
            chart.render({"config": {"extra": {"TRACE_WORKER_HTTP_PORT": 9999}}}, name="tw")
        port = [{"name": "TRACE_WORKER_HTTP_PORT", "value": "9999"}]
        with pytest.raises(helm.HelmRenderError, match=r"extraEnv must not set TRACE_WORKER_HTTP_PORT"):
            chart.render({"extraEnv": port}, name="tw")
    finally:
        chart.close()
