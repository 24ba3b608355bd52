"""docker-compose.yml, the S3 overlay and the env files: parsed with a strict Compose parser, then checked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from contracts.keys import DEFAULT_PREFIX
from tests.deploy.compose import interpolate, load_compose, read_env_file
from tests.deploy.support import ROOT, setting_env_names
from tests.deploy.worker_bounds import worker_shutdown_after_drain_s
from worker.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
S3_OVERLAY = ROOT / "deploy" / "compose.s3.yml"


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load_compose(COMPOSE)


def _seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _env_files(service: dict[str, Any]) -> list[tuple[Path, bool]]:
    return [(ROOT / e["path"], e.get("required", True)) for e in service["env_file"]]


def test_the_parser_is_strict(tmp_path: Path) -> None:
    # The checks below mean something only if a broken file fails to parse.
    text = COMPOSE.read_text()
    for broken in (
        text.replace("healthcheck:", "healtcheck:", 1),
        text.replace("condition: service_healthy", "condition: service_ready", 1),
        text.replace("stop_grace_period: 135s", "stop_grace_period: soon", 1),
    ):
        assert broken != text
        bad = tmp_path / "docker-compose.yml"
        bad.write_text(broken)
        with pytest.raises(ValueError):
            load_compose(bad)


def test_interpolation_follows_compose_rules() -> None:
    assert interpolate("${A:-x} ${B-y} $$HOME ${C}", {"B": "", "C": "c"}) == "x  $HOME c"
    with pytest.raises(KeyError):
        interpolate("${MISSING}", {})
    with pytest.raises(ValueError, match="needed"):
        interpolate("${X:?needed}", {"X": ""})


def test_every_variable_has_a_default() -> None:
    # One command brings the stack up: no variable must be set by hand.
    for path in (COMPOSE, S3_OVERLAY):
        interpolate(path.read_text(), {})  # KeyError on a variable without a default


def test_stack_services(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == {"redis", "devserver", "worker", "gateway", "demo"}
    assert stack["services"]["demo"]["profiles"] == ["demo"]
    for name in ("redis", "devserver", "worker", "gateway"):
        assert "profiles" not in stack["services"][name], f"{name} must start with a plain `up`"


def test_redis_persists_and_reports_health(stack: dict[str, Any]) -> None:
    redis = stack["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") and v.split(":")[0] in stack["volumes"] for v in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # Published on loopback only.
    assert all(str(p).startswith("127.0.0.1:") for p in redis["ports"])


def test_worker_is_scalable(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]
    assert "container_name" not in worker
    # Host ports, if any, are ephemeral (N replicas do not collide) and on loopback only, like Redis'.
    assert worker["ports"]
    for port in worker["ports"]:
        assert port["host_ip"] == "127.0.0.1", port
        assert "published" not in port, port
    assert worker["deploy"]["replicas"] >= 2
    assert worker["command"] == ["run"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_worker_is_locked_down(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]
    assert worker["read_only"] is True
    assert worker["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in worker["security_opt"]
    assert "/tmp" in worker["tmpfs"]


def test_stop_grace_outlasts_the_drain_and_the_clean_up_after_it(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]
    env: dict[str, str] = {}
    for path, required in _env_files(worker):
        if required:
            env.update(read_env_file(path))
    drain = float(env.get("TRACE_WORKER_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default))
    # At least 5 s to spare for closing the clients and the process exit.
    assert _seconds(worker["stop_grace_period"]) >= drain + worker_shutdown_after_drain_s() + 5


def test_demo_trace_lands_where_the_user_can_fetch_it(stack: dict[str, Any]) -> None:
    # `run --rm` deletes the demo's container: its trace must be on a volume a running service mounts.
    command = stack["services"]["demo"]["command"]
    output = Path(command[command.index("--output") + 1])
    demo_mounts = dict(reversed(v.split(":")[:2]) for v in stack["services"]["demo"]["volumes"])
    worker_mounts = dict(reversed(v.split(":")[:2]) for v in stack["services"]["worker"]["volumes"])
    mount = next(m for m in demo_mounts if output.is_relative_to(m))
    assert demo_mounts[mount] in stack["volumes"]  # a named volume...
    assert worker_mounts.get(mount) == demo_mounts[mount]  # ...the workers mount at the same place
    assert f"docker compose cp worker:{output} ." in COMPOSE.read_text()


def test_env_file_form_names_the_compose_release_it_needs(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]
    assert any("required" in e for e in worker["env_file"])
    header = COMPOSE.read_text().split("\nname:")[0]
    assert "Compose 2.24" in header


def test_worker_settings_reach_the_dev_services(stack: dict[str, Any]) -> None:
    worker = stack["services"]["worker"]
    files = _env_files(worker)
    assert files[0] == (ROOT / "deploy" / "compose.env", True)
    # The Micromegas file is optional and comes last, so it overrides the development defaults.
    assert files[-1] == (ROOT / "deploy" / "micromegas.env", False)
    env = read_env_file(files[0][0])
    assert set(env) <= setting_env_names(), set(env) - setting_env_names()
    settings = Settings.model_validate({k.removeprefix("TRACE_WORKER_").lower(): v for k, v in env.items()})
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.flightsql_url == "grpc://devserver:50051"
    assert settings.key_prefix == DEFAULT_PREFIX
    assert settings.http_host == "0.0.0.0"
    # The local blob store is on the worker's volume.
    mount = next(v.split(":")[1] for v in worker["volumes"] if v.startswith("traces:"))
    assert settings.blob_url.startswith(f"file://{mount}/")
    devserver = stack["services"]["devserver"]
    assert devserver["command"] == ["devserver", "--host", "0.0.0.0", "--port", "50051"]
    assert devserver["image"] == worker["image"]


def test_micromegas_example_names_real_settings() -> None:
    example = ROOT / "deploy" / "micromegas.env.example"
    names = set(read_env_file(example))
    assert {"TRACE_WORKER_FLIGHTSQL_URL", "TRACE_WORKER_FLIGHTSQL_TOKEN"} <= names
    assert names <= setting_env_names()
    commented = set(re.findall(r"^#(TRACE_WORKER_[A-Z0-9_]+)=", example.read_text(), flags=re.MULTILINE))
    assert "TRACE_WORKER_FLIGHTSQL_TLS_CA" in commented
    assert commented <= setting_env_names()
    # The real file holds a token: it must never be committed.
    assert "deploy/micromegas.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_s3_overlay_switches_the_worker_to_minio() -> None:
    overlay = load_compose(S3_OVERLAY)
    services = overlay["services"]
    for name in ("minio", "minio-init"):
        image = services[name]["image"]
        assert re.fullmatch(r"minio/(minio|mc):RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", image), image
    assert set(services) == {"minio", "minio-init", "worker"}
    env = services["worker"]["environment"]
    assert set(env) <= setting_env_names()
    settings = Settings.model_validate({k.removeprefix("TRACE_WORKER_").lower(): v for k, v in env.items()})
    bucket = settings.blob_url.removeprefix("s3://").split("/")[0]
    assert settings.blob_s3_endpoint == "http://minio:9000"
    assert settings.blob_s3_allow_http is True
    assert bucket in services["minio-init"]["command"][0]
    assert services["worker"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
