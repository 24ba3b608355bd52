"""Crash storm: three worker processes, workers SIGKILLed at seeded moments and restarted until the
queue drains. Every job ends in exactly one terminal state, byte-identical to a reference generation
of the same request (blob and chunks), with no orphan objects, staged files or pending entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.storm import make_requests, reference_traces, run_storm, verify_storm
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn
from worker.devserver import DevServer
from worker.service.job import blob_key


async def _storm(  # noqa: PLR0917 - fixtures and the storm's size
    redis_server: RedisServer, server: DevServer, spawn: Spawn, tmp_path: Path, jobs: int, kills: int
) -> None:
    seed = 7
    requests = make_requests(server, jobs, seed)
    blobs = tmp_path / "blobs"
    report = await run_storm(redis_server.url, server, blobs, spawn, requests, kills, seed, within=600)
    assert report.kills == kills
    await verify_storm(redis_server.url, blobs, requests, report)
    reference = await reference_traces(server, requests)
    for request in requests:
        job_id = request.effective_job_id()
        assert (blobs / blob_key(request, job_id)).read_bytes() == reference[job_id], job_id
    assert sum(n for attempt, n in report.attempts.items() if attempt > 1) >= 1  # kills hit running jobs
    print(f"storm: {report}")


async def test_crash_storm_short(
    redis_server: RedisServer, mixed_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    await _storm(redis_server, mixed_devserver, spawn_worker, tmp_path, jobs=30, kills=3)


@pytest.mark.long
@pytest.mark.timeout(1200)
async def test_crash_storm_long(
    redis_server: RedisServer, mixed_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    await _storm(redis_server, mixed_devserver, spawn_worker, tmp_path, jobs=200, kills=20)
