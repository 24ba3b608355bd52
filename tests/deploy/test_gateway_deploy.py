"""The gateway in the deployments: a compose service and an optional part of the Helm chart."""

from __future__ import annotations

from typing import Any

from tests.deploy.compose import load_compose
from tests.deploy.support import ROOT, render
from worker.cli import build_parser
from worker.settings import Settings


def test_compose_runs_the_gateway_with_the_worker_settings() -> None:
    stack: dict[str, Any] = load_compose(ROOT / "docker-compose.yml")
    gateway = stack["services"]["gateway"]
    worker = stack["services"]["worker"]
    assert gateway["command"][:1] == ["gateway"]
    build_parser().parse_args(gateway["command"])  # flags the command accepts
    assert gateway["env_file"] == worker["env_file"]  # same Redis, Flight SQL and prefix
    assert gateway["ports"] == ["127.0.0.1:8000:8000"]  # loopback only, like Redis
    assert gateway["read_only"] is True and "/tmp" in str(gateway["tmpfs"])
    assert "livez" in " ".join(gateway["healthcheck"]["test"])


def test_chart_renders_no_gateway_unless_enabled() -> None:
    assert "gateway" not in str([o["metadata"]["name"] for o in render().objects])


def test_chart_gateway_deployment_and_service() -> None:
    m = render({"gateway": {"enabled": True, "port": 8010, "corsOrigins": "https://a.example"}})
    deployments = {d["metadata"]["name"]: d for d in m.all("Deployment")}
    services = {s["metadata"]["name"]: s for s in m.all("Service")}
    gateway = next(d for name, d in deployments.items() if name.endswith("-gateway"))
    worker = next(d for name, d in deployments.items() if not name.endswith("-gateway"))
    pod = gateway["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["gateway"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRACE_WORKER_GATEWAY_HOST"] == "0.0.0.0"
    assert env["TRACE_WORKER_GATEWAY_PORT"] == "8010"
    assert env["TRACE_WORKER_GATEWAY_CORS_ORIGINS"] == "https://a.example"
    Settings(**{k.removeprefix("TRACE_WORKER_").lower(): v for k, v in env.items() if v is not None})
    assert container["envFrom"] == worker["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Its own selector: the worker's Service, PDB and autoscaler never pick gateway pods.
    worker_selector = worker["spec"]["selector"]["matchLabels"]
    assert not worker_selector.items() <= pod["metadata"]["labels"].items()
    service = next(s for name, s in services.items() if name.endswith("-gateway"))
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 8010
