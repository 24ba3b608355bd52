"""`request`, `status`, `jobs`, `cancel` through ``python -m worker`` against a real worker process,
the devserver and a real redis-server: what a user sees."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_client_commands import cli
from tests.support.devserver import start_devserver
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer, Lake, LakeConfig
from worker.inspect import inspect_trace


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    lake = Lake(LakeConfig(seed=42, processes=("small", "large"), large_spans=2_000_000))
    with start_devserver(lake) as server:
        yield server


async def test_request_to_a_file_then_status_and_jobs(
    redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "blobs").as_uri()))
    process = devserver.lake.processes[0]
    result = await cli(
        "request", process.process_id, "--job-id", "real-1", "-o", "real.pftrace",
        cwd=tmp_path, redis_url=redis_server.url,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = inspect_trace(tmp_path / "real.pftrace")
    assert report.ok and report.slices > 0
    assert "succeeded attempt 1" in result.err and "%" in result.err  # progress on stderr
    assert (
        f"file    {(tmp_path / 'real.pftrace').resolve()}" in result.out and "ui.perfetto.dev" in result.out
    )
    status = await cli("status", "real-1", cwd=tmp_path, redis_url=redis_server.url)
    assert "state      succeeded" in status.out and f"/{process.process_id}/real-1.pftrace" in status.out
    jobs = await cli("jobs", cwd=tmp_path, redis_url=redis_server.url)
    assert jobs.out.splitlines()[1].split()[:2] == ["real-1", "succeeded"]


async def test_unknown_process_is_one_line_and_exit_1(
    redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "blobs").as_uri()))
    result = await cli(
        "request", "00000000-0000-4000-8000-000000000000", "--quiet", cwd=tmp_path, redis_url=redis_server.url
    )
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert lines[-1].startswith("trace-worker request: job t-") and ": process_not_found: " in lines[-1]
    assert "Traceback" not in result.err


async def test_cancel_a_running_job_from_the_command_line(
    redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "blobs").as_uri()))
    big = devserver.lake.processes[1].process_id
    submitted = await cli(
        "request", big, "--job-id", "c-1", "--no-wait", cwd=tmp_path, redis_url=redis_server.url
    )
    assert submitted.out.strip() == "c-1"
    cancelled = await cli("cancel", "c-1", "--wait", "120", cwd=tmp_path, redis_url=redis_server.url)
    assert cancelled.code == 0, cancelled.err
    assert "job c-1 ended cancelled" in cancelled.out
    status = await cli("status", "c-1", cwd=tmp_path, redis_url=redis_server.url)
    assert "state      cancelled" in status.out
