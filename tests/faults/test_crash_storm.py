"""Crash storm: three worker processes, workers SIGKILLed at seeded moments and restarted until the
queue drains. Every job ends in exactly one terminal state, byte-identical to a reference generation
of the same request (blob and chunks), with no orphan objects, staged files or pending entries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from contracts import JobState, TraceRequest
from contracts.events import ChunkEvent
from tests.faults.storm import check_blob_folder, make_requests, reference_traces, run_storm, verify_storm
from tests.faults.workers import KEYS
from tests.service.support import JobReader, submit
from tests.support.devserver import start_devserver
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer, Lake, LakeConfig
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


@pytest.fixture(scope="module")
def large_devserver() -> Iterator[DevServer]:
    """One process whose trace spans several blob parts (8 MiB each)."""
    lake = Lake(LakeConfig(seed=42, processes=("large",), large_spans=1_000_000))
    with start_devserver(lake) as server:
        yield server


async def test_kill_during_a_multipart_write_leaves_no_staged_file(
    redis_server: RedisServer, large_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    env = worker_env(redis_server.url, large_devserver.url, blobs.as_uri())
    request = TraceRequest(process_id=large_devserver.lake.processes[0].process_id, job_id="multipart")
    redis = Redis.from_url(redis_server.url)
    try:
        first = spawn_worker(env, "a")
        reader = JobReader(redis, KEYS, request.effective_job_id())
        await submit(redis, KEYS, request)
        # past two parts: the local store has a staged file on disk by now
        await reader.read_until(lambda e: isinstance(e, ChunkEvent) and e.offset > 20_000_000, within=60)
        first.kill()
        first.wait(timeout=10)
        spawn_worker(env, "b")
        final = await reader.terminal(within=120)
        assert final.state == JobState.SUCCEEDED and final.attempt == 2
        assert reader.trace_bytes(2) == (blobs / blob_key(request, "multipart")).read_bytes()
        check_blob_folder(blobs, {blob_key(request, "multipart")})
    finally:
        await redis.aclose()
