"""Every Flight SQL source setting reaches every path that reads the source: the worker service,
`generate`, `processes` and the demo's worker (the demo keeps its own devserver's URL, token and TLS).
One table: a setting, a value, the FlightSqlConfig field it must set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.devserver import self_signed_cert
from worker.cli import build_parser, main
from worker.commands._demo_stack import DemoStack
from worker.commands._flightsql_args import config_from_args
from worker.commands.demo import source_tuning
from worker.service.generator import PipelineGenerator
from worker.settings import Settings, get_settings, load_settings
from worker.source import FlightSqlConfig

PEM = self_signed_cert()[0]  # the source checks that the CA file holds a certificate

#: (setting, value, FlightSqlConfig field, expected, says where the service is)
ROWS: list[tuple[str, str, str, Any, bool]] = [
    ("flightsql_url", "grpc://10.1.2.3:5005", "url", "grpc://10.1.2.3:5005", True),
    ("flightsql_token", "s3cret", "token", "s3cret", True),
    ("flightsql_tls_ca", "{ca}", "tls_ca_pem", PEM, True),
    ("flightsql_tls_skip_verify", "true", "tls_skip_verify", True, True),
    ("flightsql_preserve_dictionary", "false", "preserve_dictionary", False, False),
    ("flightsql_concurrency", "7", "concurrency", 7, False),
    ("flightsql_max_threads", "123", "max_threads", 123, False),
    ("flightsql_batch_timeout_s", "2", "batch_timeout_s", 2.0, False),
    ("flightsql_batch_timeout_s", "0", "batch_timeout_s", None, False),  # 0: no limit
    ("flightsql_direct_tickets", "off", "direct_tickets", "off", False),
    ("flightsql_process_spans_max_objects", "0", "process_spans_max_objects", 0, False),
]
PATHS = ("worker", "generate", "processes", "demo")
#: Every path with every row, but the demo's worker with the rows that say where the service is.
CASES = [(path, *row[:4]) for path in PATHS for row in ROWS if not (path == "demo" and row[4])]


def test_the_table_covers_every_source_setting() -> None:
    source_settings = {name for name in Settings.model_fields if name.startswith("flightsql_")}
    assert {row[0] for row in ROWS} == source_settings


def config_of(path: str, tmp_path: Path) -> FlightSqlConfig:
    """The source configuration ``path`` builds from the current environment."""
    get_settings.cache_clear()
    if path == "worker":
        source: Any = PipelineGenerator(load_settings())._source
        config: FlightSqlConfig = source._config
        return config
    if path in ("generate", "processes"):
        argv = [path, "--process-id", "p", "-o", "t.pftrace"] if path == "generate" else [path]
        return config_from_args(build_parser(full=[path]).parse_args(argv))
    env = DemoStack(tmp_path).worker_env(
        "redis://127.0.0.1:1/0", "p", "grpc://127.0.0.1:2", tmp_path, source_tuning(load_settings())
    )
    saved = dict(os.environ)
    try:  # the demo's worker reads its settings from exactly that environment
        os.environ.clear()
        os.environ.update(env)
        return FlightSqlConfig.from_settings(load_settings(env_file=None))
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.parametrize(("path", "setting", "value", "field", "expected"), CASES)
def test_a_source_setting_reaches_every_path(  # noqa: PLR0917 - one table row
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    setting: str,
    value: str,
    field: str,
    expected: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TRACE_WORKER_"):
            monkeypatch.delenv(name)
    (tmp_path / "ca.pem").write_bytes(PEM)
    monkeypatch.setenv(f"TRACE_WORKER_{setting.upper()}", value.format(ca=tmp_path / "ca.pem"))
    try:
        assert getattr(config_of(path, tmp_path), field) == expected
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("command", ["run", "gateway", "processes", "generate"])
@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("flightsql_tls_ca", "{ca}", "the Flight SQL CA is not a PEM certificate"),
        ("flightsql_token", "from a secret file\n", "the Flight SQL token must be printable ASCII"),
    ],
)
def test_every_command_refuses_a_bad_ca_or_token_in_one_line(  # noqa: PLR0917 - one table row
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    setting: str,
    value: str,
    says: str,
) -> None:
    """Before anything starts: the gateway's lifespan raised it as a traceback (exit 3, after
    printing that it listens), the worker as a runtime error (exit 1)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TRACE_WORKER_"):
            monkeypatch.delenv(name)
    (tmp_path / "ca.pem").write_bytes(b"")  # empty: it would silently have meant the system roots
    monkeypatch.setenv("TRACE_WORKER_FLIGHTSQL_URL", "grpc+tls://127.0.0.1:1")
    monkeypatch.setenv("TRACE_WORKER_GATEWAY_PORT", "0")
    monkeypatch.setenv(f"TRACE_WORKER_{setting.upper()}", value.format(ca=tmp_path / "ca.pem"))
    argv = {"generate": ["--process-id", "p", "-o", "t.pftrace"]}.get(command, [])
    get_settings.cache_clear()
    try:
        assert main([command, *argv]) == 2
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    assert out == ""  # the gateway never says it listens
    assert err.startswith(f"trace-worker {command}: bad settings: {says}") and err.count("\n") == 1
