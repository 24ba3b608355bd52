"""Settings come only from TRACE_WORKER_* names (environment and .env); a misspelt TRACE_WORKER_*
name or a bad value is reported by variable name, in one style, by every command that reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from worker.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]
#: What a project's shared .env may hold besides our variables.
FOREIGN = "DATABASE_URL=postgres://db/app\nSECRET_KEY=abc\nexport DEBUG=1\n"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TRACE_WORKER_"):
            monkeypatch.delenv(name)
    return tmp_path


def test_other_keys_of_a_dotenv_are_ignored(in_tmp: Path) -> None:
    (in_tmp / ".env").write_text(FOREIGN + "TRACE_WORKER_KEY_PREFIX=mine\n")
    assert load_settings().key_prefix == "mine"


@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_misspelt_name_is_reported_by_name(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == ".env":
        (in_tmp / ".env").write_text(FOREIGN + "TRACE_WORKER_LEASE=5\n")
    else:
        monkeypatch.setenv("TRACE_WORKER_LEASE", "5")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == "unknown setting TRACE_WORKER_LEASE (did you mean TRACE_WORKER_LEASE_S?)"


def test_bad_values_are_each_reported_by_name(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_WORKER_LEASE_S", "soon")
    (in_tmp / ".env").write_text("TRACE_WORKER_BLOB_URL=ftp://x\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    problems = str(caught.value).split("; ")
    assert sorted(p.split(":")[0] for p in problems) == [
        "bad setting TRACE_WORKER_BLOB_URL",
        "bad setting TRACE_WORKER_LEASE_S",
    ]


def test_tool_variables_are_not_taken_for_misspelt_settings(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACE_WORKER_DEVSERVER_TOKEN", "t")
    monkeypatch.setenv("TRACE_WORKER_VENV", ".venv")
    assert load_settings().redis_url.startswith("redis://")


#: Every command that reads settings, with arguments that get it as far as reading them.
COMMANDS = {
    "generate": ["--process-id", "00000000-0000-0000-0000-000000000000", "-o", "t.pftrace"],
    "processes": [],
    "request": ["00000000-0000-0000-0000-000000000000", "--no-wait"],
    "status": ["some-job"],
    "cancel": ["some-job"],
    "jobs": ["--redis-url", "redis://127.0.0.1:1/0", "--prefix", "p"],
    "run": [],
    "demo": [],
}


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_reports_a_misspelt_name_in_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / ".env").write_text(FOREIGN + "TRACE_WORKER_REDIS_ULR=redis://127.0.0.1:1/0\n")
    done = run_cli(tmp_path, command, *COMMANDS[command])
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"trace-worker {command}: unknown setting TRACE_WORKER_REDIS_ULR "
        "(did you mean TRACE_WORKER_REDIS_URL?)"
    ]


def test_a_command_runs_next_to_a_foreign_dotenv(tmp_path: Path, redis_server: RedisServer) -> None:
    (tmp_path / ".env").write_text(FOREIGN)
    done = run_cli(tmp_path, "jobs", TRACE_WORKER_REDIS_URL=redis_server.url)
    assert (done.returncode, done.stdout.strip()) == (0, "no jobs yet"), done.stderr


def test_run_reports_an_unknown_redis_url_argument_without_the_password(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # redis-py passes unknown query arguments to its connections: `PASSWORD` (not `password`) failed
    # there, as a traceback, once the worker connected.
    url = f"redis://127.0.0.1:{redis_server.port}/0?PASSWORD=hunter2-secret"
    done = run_cli(tmp_path, "run", TRACE_WORKER_REDIS_URL=url, TRACE_WORKER_HTTP_PORT="0")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2-secret" not in done.stderr + done.stdout
    assert done.stderr.splitlines() == [
        "trace-worker run: bad setting TRACE_WORKER_REDIS_URL: unknown query argument 'PASSWORD' "
        "(redis-py reads e.g. db, password, ssl_cert_reqs; names are case-sensitive)"
    ]
