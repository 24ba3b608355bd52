"""`request`, `status`, `jobs`, `cancel` through ``python -m worker`` against a real worker process,
the devserver and a real redis-server: what a user sees."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.cli.test_client_commands import WAIT_S, cli, finish, start_cli
from tests.client.test_cancel_waiting import stuck_worker
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


async def test_cancel_a_job_still_waiting_for_a_worker(
    redis: aioredis.Redis,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    """The request waits on the request stream (the worker's only slot is stuck): the cancel is
    answered ``pending`` at once and the job ends cancelled when a worker picks it up."""
    small = devserver.lake.processes[0].process_id
    url = redis_server.url
    async with stuck_worker(redis, devserver, spawn_worker, url, tmp_path / "blobs"):
        submitted = await cli("request", small, "--job-id", "q-1", "--no-wait", cwd=tmp_path, redis_url=url)
        assert submitted.out.strip() == "q-1", submitted.err
        proc = await start_cli("cancel", "q-1", "--wait", "120", cwd=tmp_path, redis_url=url)
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), WAIT_S)).decode()
        assert first.startswith("cancel pending for q-1 (1 waiting request(s) will be answered cancelled")
        status = await cli("status", "q-1", cwd=tmp_path, redis_url=url)
        assert "state      queued" in status.out  # still waiting: nothing ran
        freed = await cli("cancel", "blocker", cwd=tmp_path, redis_url=url)
        assert freed.code == 0 and freed.out.startswith("cancel cancelled for blocker"), freed.err
        result = await finish(proc)
    assert result.code == 0, result.err
    assert "job q-1 ended cancelled" in result.out
    status = await cli("status", "q-1", cwd=tmp_path, redis_url=url)
    assert "state      cancelled" in status.out and "attempt    0" in status.out
