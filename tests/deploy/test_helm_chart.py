"""The Helm chart, linted and rendered by Helm's own library, for default and production-like values."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import helm_python as helm
import pytest
from redis.connection import parse_url

from contracts.keys import Keys
from tests.deploy.support import CHART, Manifests, production_values, render, setting_env_names
from tests.deploy.worker_bounds import worker_readyz_worst_case_s, worker_shutdown_after_drain_s
from worker.settings import Settings

S3 = {"blobUrl": "s3://traces/worker"}


def _lint_problems(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    report = helm.lint(CHART, values, strict=True, namespace="observability")
    assert report["total_charts_linted"] == 1
    # Severity 1 is informational (e.g. "icon is recommended"); 2 warning, 3 error.
    return [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]


@pytest.mark.parametrize("values", [None, production_values()], ids=["default", "production"])
def test_lint_is_clean_in_strict_mode(values: dict[str, Any] | None) -> None:
    assert _lint_problems(values) == []


def test_lint_reports_values_that_break_the_schema() -> None:
    problems = _lint_problems({"config": {"concurrency": 0}})
    assert any("/config/concurrency" in p["error"] for p in problems), problems


def test_default_install_renders_the_worker_and_nothing_optional() -> None:
    m = render()
    assert m.kinds() == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert m.one("Deployment")["spec"]["replicas"] == 1  # the default emptyDir blob store is one pod's disk
    assert m.container()["args"] == ["run"]
    assert m.container()["image"] == "trace-worker:0.1.0"  # the chart's appVersion


def test_probes_hit_the_health_endpoints_on_the_http_port() -> None:
    m = render({"config": {"httpPort": 9090}})
    c = m.container()
    assert c["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert m.one("ConfigMap")["data"]["TRACE_WORKER_HTTP_PORT"] == "9090"
    # Bound to all interfaces, or the kubelet's probes could not reach it.
    assert m.one("ConfigMap")["data"]["TRACE_WORKER_HTTP_HOST"] == "0.0.0.0"
    service_port = m.one("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"


def test_security_context_is_read_only_non_root_without_capabilities() -> None:
    m = render()
    sc = m.container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    pod = m.pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    # A read-only root still needs a writable /tmp (and /data for the local blob store).
    mounts = {v["mountPath"]: v["name"] for v in m.container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "emptyDir" in volumes[mounts["/data"]]


def test_resources_have_requests_and_a_memory_limit() -> None:
    res = render({"config": S3}).container()["resources"]
    assert set(res["requests"]) == {"cpu", "memory"}
    assert "memory" in res["limits"]
    custom = render({"resources": {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "6Gi"}}})
    assert custom.container()["resources"]["limits"] == {"memory": "6Gi"}


def test_config_map_holds_settings_the_worker_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    data = render(production_values()).one("ConfigMap")["data"]
    assert set(data) <= setting_env_names(), set(data) - setting_env_names()
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.redis_url == "rediss://redis.data.svc.cluster.local:6380/2"
    assert settings.flightsql_url.startswith("grpc+tls://")
    assert settings.flightsql_tls_ca == "/etc/trace-worker/flightsql-ca/ca.crt"
    assert settings.blob_url == "s3://perfetto-traces/worker"
    assert settings.blob_s3_region == "eu-west-1"
    assert settings.worker_concurrency == 4
    assert settings.drain_timeout_s == 120
    assert settings.flightsql_concurrency == 8  # from config.extra
    assert settings.log_format == "json"


def test_config_changes_roll_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = render(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum({}) != checksum({"config": {"keyPrefix": "other"}})


def test_termination_grace_outlasts_the_drain_and_the_clean_up_after_it() -> None:
    after_drain = worker_shutdown_after_drain_s()
    for values in ({}, production_values(), {"config": {"drainTimeoutSeconds": 1}}):
        m = render(values)
        drain = float(m.one("ConfigMap")["data"]["TRACE_WORKER_DRAIN_TIMEOUT_S"])
        # At least 5 s to spare for closing the clients and the process exit.
        assert m.pod_spec()["terminationGracePeriodSeconds"] >= drain + after_drain + 5
    least = 60 + int(after_drain) + 1
    assert (
        render({"terminationGracePeriodSeconds": least}).pod_spec()["terminationGracePeriodSeconds"] == least
    )
    with pytest.raises(
        helm.HelmRenderError, match=r"must be greater than config\.drainTimeoutSeconds \(60\) plus"
    ):
        render({"terminationGracePeriodSeconds": least - 1})
    with pytest.raises(helm.HelmValuesError, match="terminationGraceMarginSeconds"):
        render({"terminationGraceMarginSeconds": int(after_drain)})


def test_readiness_timeout_outlasts_readyz_with_every_dependency_hung() -> None:
    worst = worker_readyz_worst_case_s()
    assert worst == 3.5  # what the chart's docs say: the probes run at once, an answer within 3.5 s
    readiness = render().container()["readinessProbe"]
    # At least 3 s to spare (a busy node's connect and scheduling), by default and at the schema's minimum.
    least = json.loads((CHART / "values.schema.json").read_text())["properties"]["probes"]["properties"][
        "readiness"
    ]["properties"]["timeoutSeconds"]["minimum"]
    assert readiness["timeoutSeconds"] >= least >= worst + 3
    assert readiness["periodSeconds"] >= readiness["timeoutSeconds"]
    with pytest.raises(helm.HelmValuesError, match="/probes/readiness/timeoutSeconds"):
        render({"probes": {"readiness": {"timeoutSeconds": 3}}})


def test_credentials_go_into_a_secret_and_reach_the_worker_by_reference() -> None:
    secrets = {
        "flightsqlToken": "tok-123",
        "redisPassword": "hunter2",
        "s3AccessKeyId": "AKIA1",
        "s3SecretAccessKey": "s3cret",
    }
    m = render({"secret": secrets})
    secret = m.one("Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "flightsql-token": "tok-123",
        "redis-password": "hunter2",
        "s3-access-key-id": "AKIA1",
        "s3-secret-access-key": "s3cret",
    }
    env = m.env()
    assert set(env) == {
        "TRACE_WORKER_FLIGHTSQL_TOKEN",
        "TRACE_WORKER_REDIS_PASSWORD",
        "TRACE_WORKER_BLOB_S3_ACCESS_KEY_ID",
        "TRACE_WORKER_BLOB_S3_SECRET_ACCESS_KEY",
    }
    assert set(env) <= setting_env_names()
    token_ref = env["TRACE_WORKER_FLIGHTSQL_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token_ref == {"name": secret["metadata"]["name"], "key": "flightsql-token", "optional": False}
    # No credential is ever written in clear into the ConfigMap.
    assert not any(v in str(m.one("ConfigMap")["data"]) for v in secrets.values())


def test_only_the_credentials_given_are_wired() -> None:
    m = render({"secret": {"flightsqlToken": "tok"}})
    assert set(m.env()) == {"TRACE_WORKER_FLIGHTSQL_TOKEN"}
    assert list(m.one("Secret")["data"]) == ["flightsql-token"]


def test_existing_secret_is_referenced_not_rendered() -> None:
    m = render({"secret": {"existingSecret": "creds", "keys": {"flightsqlToken": "mm-token"}}})
    assert m.all("Secret") == []
    env = m.env()
    assert len(env) == 4
    token_ref = env["TRACE_WORKER_FLIGHTSQL_TOKEN"]["valueFrom"]["secretKeyRef"]
    # Keys an existing Secret lacks are skipped rather than blocking the pod.
    assert token_ref == {"name": "creds", "key": "mm-token", "optional": True}


def test_flightsql_ca_is_mounted_where_the_setting_points() -> None:
    m = render({"flightsql": {"tlsCa": {"secretName": "mm-ca", "key": "root.pem"}}})
    path = m.one("ConfigMap")["data"]["TRACE_WORKER_FLIGHTSQL_TLS_CA"]
    mount = next(v for v in m.container()["volumeMounts"] if v["name"] == "flightsql-ca")
    assert path == f"{mount['mountPath']}/root.pem"
    assert mount["readOnly"] is True
    volume = next(v for v in m.pod_spec()["volumes"] if v["name"] == "flightsql-ca")
    assert volume["secret"] == {"secretName": "mm-ca", "items": [{"key": "root.pem", "path": "root.pem"}]}
    assert "TRACE_WORKER_FLIGHTSQL_TLS_CA" not in render().one("ConfigMap")["data"]


def test_default_blob_store_is_one_pods_disk_with_its_space_requested() -> None:
    m = render()
    volume = next(v for v in m.pod_spec()["volumes"] if v["name"] == "data")
    assert volume == {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}}
    # The emptyDir is node disk: the scheduler must know the pod needs it.
    assert m.container()["resources"]["requests"]["ephemeral-storage"] == "2Gi"
    own = render({"resources": {"requests": {"cpu": "1", "ephemeral-storage": "5Gi"}}})
    # resources.requests merges with the defaults; its own ephemeral-storage wins.
    assert own.container()["resources"]["requests"]["ephemeral-storage"] == "5Gi"
    claim = render({"localBlob": {"existingClaim": "traces-pvc"}})
    assert "ephemeral-storage" not in claim.container()["resources"]["requests"]


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2},
        {"autoscaling": {"enabled": True, "maxReplicas": 3}},
        {"replicaCount": 3, "localBlob": {"existingClaim": "traces-pvc"}},  # not said to be ReadWriteMany
    ],
    ids=["two replicas", "autoscaling", "claim not ReadWriteMany"],
)
def test_more_than_one_replica_needs_s3_or_a_shared_claim(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmRenderError, match="need a shared volume"):
        render(values)


def test_more_than_one_replica_with_s3_or_a_read_write_many_claim() -> None:
    assert render({"replicaCount": 3, "config": S3}).one("Deployment")["spec"]["replicas"] == 3
    shared = {"replicaCount": 3, "localBlob": {"existingClaim": "traces-pvc", "readWriteMany": True}}
    volumes = render(shared).pod_spec()["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "traces-pvc"}} in volumes


def test_s3_blob_store_needs_no_data_volume() -> None:
    m = render(
        {
            "config": {"blobUrl": "s3://bucket/traces"},
            "s3": {"endpoint": "http://minio:9000", "allowHttp": True},
        }
    )
    assert "/data" not in {v["mountPath"] for v in m.container()["volumeMounts"]}
    data = m.one("ConfigMap")["data"]
    assert data["TRACE_WORKER_BLOB_S3_ENDPOINT"] == "http://minio:9000"
    assert data["TRACE_WORKER_BLOB_S3_ALLOW_HTTP"] == "true"
    claim = render({"localBlob": {"existingClaim": "traces-pvc"}}).pod_spec()["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "traces-pvc"}} in claim


def test_service_and_optional_service_monitor_scrape_metrics() -> None:
    assert render().all("ServiceMonitor") == []
    m = render(production_values())
    monitor = m.one("ServiceMonitor")
    service = m.one("Service")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_pod_disruption_budget_selects_the_workers_and_is_switchable() -> None:
    m = render()
    pdb = m.one("PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": m.one("Deployment")["spec"]["selector"]["matchLabels"]},
    }
    pod_labels = m.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert (
        render({"podDisruptionBudget": {"minAvailable": "50%"}}).one("PodDisruptionBudget")["spec"][
            "minAvailable"
        ]
        == "50%"
    )
    assert render({"podDisruptionBudget": {"enabled": False}}).all("PodDisruptionBudget") == []


@pytest.mark.parametrize(("version", "rendered"), [("v1.25.16", False), ("v1.26.0", True), ("v1.33.1", True)])
def test_unready_workers_can_be_evicted_where_the_cluster_supports_it(version: str, rendered: bool) -> None:
    # Every worker is unready while Redis or Flight SQL is down; a node drain must not wait for the outage.
    spec = render(kube_version=version).one("PodDisruptionBudget")["spec"]
    assert ("unhealthyPodEvictionPolicy" in spec) is rendered
    off = render({"podDisruptionBudget": {"unhealthyPodEvictionPolicy": ""}}, kube_version=version)
    assert "unhealthyPodEvictionPolicy" not in off.one("PodDisruptionBudget")["spec"]


def _trigger(m: Manifests) -> dict[str, Any]:
    """The waiting-work trigger (the first); the second counts the work in flight."""
    triggers = m.one("ScaledObject")["spec"]["triggers"]
    assert len(triggers) == 2
    assert {t["type"] for t in triggers} == {"redis-streams"}
    assert (
        triggers[1]["metadata"]["pendingEntriesCount"]
        == m.one("ConfigMap")["data"]["TRACE_WORKER_WORKER_CONCURRENCY"]
    )
    for key in ("address", "databaseIndex", "enableTLS", "stream"):
        assert triggers[0]["metadata"][key] == triggers[1]["metadata"][key]
    assert triggers[0].get("authenticationRef") == triggers[1].get("authenticationRef")
    found: dict[str, Any] = triggers[0]
    return found


def test_keda_scales_on_the_request_stream_of_the_worker_group() -> None:
    m = render({"autoscaling": {"enabled": True}, "config": {"keyPrefix": "perf", **S3}})
    assert "replicas" not in m.one("Deployment")["spec"]  # the autoscaler owns the count
    assert m.all("HorizontalPodAutoscaler") == []
    obj = m.one("ScaledObject")
    assert obj["spec"]["scaleTargetRef"]["name"] == m.one("Deployment")["metadata"]["name"]
    assert (obj["spec"]["minReplicaCount"], obj["spec"]["maxReplicaCount"]) == (1, 10)
    meta = _trigger(m)["metadata"]
    keys = Keys("perf")
    assert meta["stream"] == keys.requests
    assert "consumerGroup" not in meta  # XLEN: waiting + in flight
    in_flight = m.one("ScaledObject")["spec"]["triggers"][1]["metadata"]
    assert in_flight["consumerGroup"] == keys.group
    assert meta["address"] == "redis-master:6379"
    assert meta["databaseIndex"] == "0"
    assert meta["enableTLS"] == "false"
    assert meta["streamLength"] == "2"  # config.concurrency
    assert "authenticationRef" not in _trigger(m)  # no password configured
    assert m.all("TriggerAuthentication") == []


def test_keda_production_reads_tls_db_and_password_from_the_settings() -> None:
    m = render(production_values())
    obj = m.one("ScaledObject")
    assert obj["spec"]["minReplicaCount"] == 0  # lag scales to zero
    meta = _trigger(m)["metadata"]
    assert meta["address"] == "redis.data.svc.cluster.local:6380"
    assert meta["databaseIndex"] == "2"
    assert meta["enableTLS"] == "true"
    assert (meta["lagCount"], meta["activationLagCount"]) == ("4", "0")
    auth = m.one("TriggerAuthentication")
    assert _trigger(m)["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "trace-worker-credentials", "key": "redis-password"}
    ]


def test_a_redis_acl_user_reaches_the_worker_the_gateway_and_keda() -> None:
    values = production_values()
    values["config"]["redisUsername"] = "trace-worker"
    values["gateway"] = {"enabled": True}
    m = render(values)
    assert m.one("ConfigMap")["data"]["TRACE_WORKER_REDIS_USERNAME"] == "trace-worker"
    for deployment in m.all("Deployment"):  # the worker's and the gateway's read that ConfigMap
        env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": m.one("ConfigMap")["metadata"]["name"]}} in env_from
    assert len(m.all("Deployment")) == 2
    for trigger in m.one("ScaledObject")["spec"]["triggers"]:  # KEDA signs in as the same user
        assert trigger["metadata"]["username"] == "trace-worker"
    assert "TRACE_WORKER_REDIS_USERNAME" not in json.dumps(render(production_values()).all("ConfigMap"))


@pytest.mark.parametrize(("metric", "field"), [("streamLength", "streamLength"), ("lag", "lagCount")])
def test_keda_metric_choice(metric: str, field: str) -> None:
    m = render({"config": S3, "autoscaling": {"enabled": True, "keda": {"metric": metric, "target": 7}}})
    meta = _trigger(m)["metadata"]
    assert meta[field] == "7"
    assert {"pendingEntriesCount", "streamLength", "lagCount"} & set(meta) == {field}


def test_hpa_on_an_external_metric_when_keda_is_off() -> None:
    values: dict[str, Any] = {
        "config": S3,
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 8,
            "keda": {"enabled": False},
            "hpa": {
                "metricName": "redis_stream_length",
                "metricSelector": {"stream": "traces:requests"},
                "targetAverageValue": "3",
            },
        },
    }
    m = render(values)
    assert m.all("ScaledObject") == []
    hpa = m.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == m.one("Deployment")["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "External",
            "external": {
                "metric": {
                    "name": "redis_stream_length",
                    "selector": {"matchLabels": {"stream": "traces:requests"}},
                },
                "target": {"type": "AverageValue", "averageValue": "3"},
            },
        }
    ]
    missing = copy.deepcopy(values)
    missing["autoscaling"]["hpa"]["metricName"] = ""
    with pytest.raises(helm.HelmRenderError, match="metricName is required"):
        render(missing)


def test_autoscaling_off_renders_no_autoscaler() -> None:
    m = render({"autoscaling": {"enabled": False}, "replicaCount": 5, "config": S3})
    assert m.all("ScaledObject") == m.all("HorizontalPodAutoscaler") == []
    assert m.one("Deployment")["spec"]["replicas"] == 5


def test_notes_name_the_stream_and_the_health_endpoint() -> None:
    notes = render().notes
    assert "traces:requests" in notes
    assert "/readyz" in notes
    assert "for trying out" in notes  # the default emptyDir blob store says what it is
    assert "for trying out" not in render({"config": S3}).notes


def test_redis_tls_files_are_mounted_and_named_in_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "config": {"redisUrl": "rediss://redis.data:6380/1", **S3},
        "redisTls": {"secretName": "redis-tls", "clientCert": True},
        "autoscaling": {"enabled": True},
    }
    m = render(values)
    url = m.one("ConfigMap")["data"]["TRACE_WORKER_REDIS_URL"]
    # redis-py (Redis.from_url) turns the query into connection arguments.
    kwargs: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    mount = next(v for v in m.container()["volumeMounts"] if v["name"] == "redis-tls")
    assert mount["readOnly"] is True
    assert kwargs["ssl_ca_certs"] == f"{mount['mountPath']}/ca.crt"
    assert kwargs["ssl_certfile"] == f"{mount['mountPath']}/tls.crt"
    assert kwargs["ssl_keyfile"] == f"{mount['mountPath']}/tls.key"
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.data", 6380, 1)
    monkeypatch.setenv("TRACE_WORKER_REDIS_URL", url)
    assert Settings(_env_file=None).redis_url == url
    volume = next(v for v in m.pod_spec()["volumes"] if v["name"] == "redis-tls")
    assert volume["secret"]["secretName"] == "redis-tls"
    assert {i["key"] for i in volume["secret"]["items"]} == {"ca.crt", "tls.crt", "tls.key"}
    # KEDA reads the same files and connects with TLS.
    refs = {
        r["parameter"]: (r["name"], r["key"])
        for r in m.one("TriggerAuthentication")["spec"]["secretTargetRef"]
    }
    assert refs == {
        "ca": ("redis-tls", "ca.crt"),
        "cert": ("redis-tls", "tls.crt"),
        "key": ("redis-tls", "tls.key"),
    }
    assert _trigger(m)["metadata"]["enableTLS"] == "true"
    assert _trigger(m)["metadata"]["address"] == "redis.data:6380"


def test_redis_tls_needs_a_tls_url() -> None:
    with pytest.raises(helm.HelmRenderError, match="needs a rediss://"):
        render({"redisTls": {"secretName": "redis-tls"}})
    assert "?" not in render().one("ConfigMap")["data"]["TRACE_WORKER_REDIS_URL"]
