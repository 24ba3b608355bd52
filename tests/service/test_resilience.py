"""Crashes and outages: a worker process killed mid-job, Redis restarted under a running worker,
the Flight SQL service down then back, graceful shutdown with and without drain."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts import ChunkEvent, JobState, Keys, StatusEvent, TraceRequest, parse_entry
from tests.service.support import PID, JobReader, ScriptedGenerator, fast_settings, submit, wait_until
from tests.support.devserver import run_devserver_subprocess, small_lake
from tests.support.redis_server import RedisServer, free_port
from worker.devserver import DevServer, Lake, LakeConfig
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.sinks.blob import blob_store_from_settings
from worker.sinks.blob.memory import MemoryBlobStore

KEYS = Keys("t")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def busy_devserver() -> Iterator[DevServer]:
    """A process big enough that a job is still running when the test kills its worker."""
    with DevServer(small_lake(processes=("typical",), scale=3.0)).start() as server:
        yield server


def _worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--consumer", name],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _traces(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.pftrace"))


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _worker_env(redis_server: RedisServer, devserver: DevServer, blobs: Path) -> dict[str, str]:
    return {
        "TRACE_WORKER_REDIS_URL": redis_server.url,
        "TRACE_WORKER_FLIGHTSQL_URL": devserver.url,
        "TRACE_WORKER_BLOB_URL": f"file://{blobs}",
        "TRACE_WORKER_KEY_PREFIX": "t",
        "TRACE_WORKER_LEASE_S": "2",
        "TRACE_WORKER_HEARTBEAT_S": "0.5",
        "TRACE_WORKER_RECLAIM_INTERVAL_S": "0.3",
        "TRACE_WORKER_CHUNK_SIZE": "65536",
        "TRACE_WORKER_HTTP_PORT": "0",
    }


async def _chunks_left(redis: Redis, job_id: str) -> list[ChunkEvent]:
    """The chunk entries on the job stream now (XRANGE of the whole stream, after the job ended)."""
    entries: Any = await redis.xrange(KEYS.job(job_id))
    events = [parse_entry(fields) for _, fields in entries]
    return [e for e in events if isinstance(e, ChunkEvent)]


@contextlib.asynccontextmanager
async def _killed_then_taken_over(
    redis_server: RedisServer,
    redis: Redis,
    devserver: DevServer,
    tmp_path: Path,
    b_settings: dict[str, str] | None = None,
) -> AsyncIterator[tuple[str, JobReader, subprocess.Popen[bytes]]]:
    """A job of the devserver's first process: worker a is SIGKILLed once its first chunk is out (no
    cleanup: the entry stays in a's pending list), then worker b starts (with ``b_settings`` added).
    Yields (job id, reader, b); prints both logs when an assertion fails; kills what still runs."""
    env = _worker_env(redis_server, devserver, tmp_path)
    req = TraceRequest(process_id=devserver.lake.processes[0].process_id)
    job_id = req.effective_job_id()
    reader = JobReader(redis, KEYS, job_id)
    logs = tmp_path.parent / f"{tmp_path.name}-logs"
    logs.mkdir()
    a = _worker("worker-a", env, logs / "a.log")
    b: subprocess.Popen[bytes] | None = None
    try:
        await submit(redis, KEYS, req)
        await reader.read_until(lambda e: e.type == "chunk" and e.attempt == 1, within=120)
        a.kill()
        a.wait(timeout=10)
        b = _worker("worker-b", {**env, **(b_settings or {})}, logs / "b.log")
        yield job_id, reader, b
    except AssertionError:
        for log in sorted(logs.iterdir()):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-5000:]}")
        raise
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_worker_killed_mid_job_is_finished_by_another(
    redis_server: RedisServer, redis: Redis, busy_devserver: DevServer, tmp_path: Path
) -> None:
    process = busy_devserver.lake.processes[0]
    async with _killed_then_taken_over(redis_server, redis, busy_devserver, tmp_path) as (job_id, reader, b):
        final = await reader.terminal(within=180)
        assert final.state == JobState.SUCCEEDED and final.attempt == 2
        terminal = [s for s in reader.statuses() if s.state.terminal]
        assert len(terminal) == 1
        data = reader.trace_bytes(2)
        blob = (tmp_path / process.process_id / f"{job_id}.pftrace").read_bytes()
        assert data == blob and hashlib.sha256(blob).hexdigest() == final.sha256
        # The killed attempt's chunks (another worker, another delivery) went with the job's end:
        # the job stream holds the succeeded attempt's chunks only, and nothing records them any more.
        assert any(e.type == "chunk" and e.attempt == 1 for e in reader.events)
        left = await _chunks_left(redis, job_id)
        assert {c.attempt for c in left} == {2}
        assert [c.seq for c in left] == list(range(final.chunks or 0)) and left[-1].last
        assert hashlib.sha256(b"".join(c.data for c in left)).hexdigest() == final.sha256
        assert not await redis.exists(KEYS.chunk_ids(job_id))
        traces = _traces(tmp_path)
        assert traces == [f"{job_id}.pftrace"]  # the killed attempt left no object
        pending: Any = await redis.xpending(KEYS.requests, KEYS.group)
        assert pending["pending"] == 0
        assert _stop(b) == 0  # SIGTERM: graceful exit


async def test_job_failing_after_a_killed_attempt_leaves_no_chunk(
    redis_server: RedisServer, redis: Redis, busy_devserver: DevServer, tmp_path: Path
) -> None:
    # Worker b writes a few chunks of attempt 2, then the trace outgrows its limit: failed.
    small = {"TRACE_WORKER_MAX_TRACE_BYTES": str(200_000)}
    async with _killed_then_taken_over(redis_server, redis, busy_devserver, tmp_path, small) as (
        job_id,
        reader,
        b,
    ):
        final = await reader.terminal(within=180)
        assert final.state == JobState.FAILED and final.attempt == 2, final
        assert final.error_code == "trace_too_large"
        assert any(e.type == "chunk" and e.attempt == 1 for e in reader.events)
        assert any(e.type == "chunk" and e.attempt == 2 for e in reader.events)
        assert await _chunks_left(redis, job_id) == []
        assert not await redis.exists(KEYS.chunk_ids(job_id))
        assert _stop(b) == 0


async def test_redis_restart_under_a_running_worker() -> None:
    server = RedisServer(persistence=True).start()
    redis = Redis.from_url(server.url)
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    service = Service(
        fast_settings(server.url, lease_s=10.0, heartbeat_s=0.5), generator=gen, store=MemoryBlobStore()
    )
    try:
        await service.start()
        req = TraceRequest(process_id=PID, job_id="through-restart")
        reader = JobReader(redis, KEYS, "through-restart")
        await submit(redis, KEYS, req)
        await reader.read_until(lambda e: e.type == "chunk")
        server.stop()
        server.start()
        assert gen.gate is not None
        gen.gate.set()
        final = await _retrying(reader.terminal)
        assert final.state == JobState.SUCCEEDED
        assert reader.trace_bytes(final.attempt) == gen.expected(req)
        # the subscriber reads again after the restart
        reader2 = JobReader(redis, KEYS, "after-restart")
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="after-restart"))
        assert (await reader2.terminal(within=120)).state == JobState.SUCCEEDED
    finally:
        await service.stop()
        await redis.aclose()
        server.close()


async def _retrying(op: Any) -> Any:
    """The test's own client sees the restart too: retry its read once the server is back."""
    for _ in range(50):
        try:
            return await op()
        except RedisConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("redis did not come back")


async def test_flightsql_down_then_back(redis_server: RedisServer, redis: Redis, tmp_path: Path) -> None:
    lake = small_lake()
    port = free_port()
    settings = fast_settings(
        redis_server.url,
        flightsql_url=f"grpc://127.0.0.1:{port}",
        blob_url=f"file://{tmp_path}",
        retry_max=20,
        retry_backoff_s=0.1,
        retry_backoff_max_s=0.3,
    )
    service = Service(
        settings, generator=PipelineGenerator(settings), store=blob_store_from_settings(settings)
    )
    await service.start()
    server: DevServer | None = None
    try:
        req = TraceRequest(process_id=lake.processes[0].process_id)
        reader = JobReader(redis, KEYS, req.effective_job_id())
        await submit(redis, KEYS, req)
        # the service is down: attempt 1 fails transiently and attempt 2 starts
        await reader.read_until(lambda e: isinstance(e, StatusEvent) and e.attempt == 2)
        server = DevServer(lake, port=port).start()
        final = await reader.terminal(within=120)
        assert final.state == JobState.SUCCEEDED and final.attempt >= 2
        assert (
            reader.trace_bytes(final.attempt)
            == (tmp_path / req.process_id / f"{req.effective_job_id()}.pftrace").read_bytes()
        )
        assert [s.state for s in reader.statuses()].count(JobState.FAILED) == 0
    finally:
        await service.stop()
        if server is not None:
            server.stop()


async def test_graceful_shutdown_drains_or_releases(
    redis_server: RedisServer, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # drained: the running job finishes within the drain timeout
    gen = ScriptedGenerator(chunks=2, gate=asyncio.Event())
    service = Service(
        fast_settings(redis_server.url, drain_timeout_s=30), generator=gen, store=MemoryBlobStore()
    )
    await service.start()
    reader = JobReader(redis, KEYS, "drained")
    await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="drained"))
    await reader.read_until(lambda e: e.type == "chunk")
    stopping = asyncio.create_task(service.stop())
    await wait_until(lambda: _is_set(service.rt.stopping), what="stop begun")
    assert gen.gate is not None
    gen.gate.set()
    await stopping
    final = await reader.terminal()
    assert final.state == JobState.SUCCEEDED and final.attempt == 1

    # released: the drain timeout passes, the job is left for another worker, which finishes it
    gen = ScriptedGenerator(chunks=2, gate=asyncio.Event())
    service = Service(
        fast_settings(redis_server.url, drain_timeout_s=0.2),
        generator=gen,
        store=MemoryBlobStore(),
        consumer="a",
    )
    await service.start()
    reader = JobReader(redis, KEYS, "released")
    await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="released"))
    await reader.read_until(lambda e: e.type == "chunk")
    caplog.set_level(logging.INFO)
    await service.stop()
    # The release is logged once, as such; FastStream's report of the handler it cancelled (an ERROR
    # with a CancelledError traceback) is not, since that cancellation is the release.
    assert "released for reclaim" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    assert not await redis.exists(KEYS.lock("released"))
    assert [s.state for s in reader.statuses()] == [JobState.QUEUED, JobState.RUNNING]
    gen2 = ScriptedGenerator(chunks=2)
    other = Service(fast_settings(redis_server.url), generator=gen2, store=MemoryBlobStore(), consumer="b")
    await other.start()
    try:
        final = await reader.terminal()
        assert final.state == JobState.SUCCEEDED and final.attempt == 2
    finally:
        await other.stop()


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


async def test_cancel_stops_a_job_stuck_in_a_query(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    """The pipeline checks the cancel between batches; one stuck waiting for the server is stopped
    after a short grace period anyway."""
    with run_devserver_subprocess(["--processes", "typical", "--scale", "3"]) as dev:
        settings = fast_settings(
            redis_server.url, flightsql_url=dev.url, blob_url=f"file://{tmp_path}", chunk_size=65536
        )
        store = blob_store_from_settings(settings)
        service = Service(settings, generator=PipelineGenerator(settings), store=store)
        await service.start()
        process = Lake(LakeConfig(processes=("typical",), scale=3)).processes[0]
        reader = JobReader(redis, KEYS, "stuck")
        try:
            await submit(redis, KEYS, TraceRequest(process_id=process.process_id, job_id="stuck"))
            await reader.read_until(lambda e: e.type == "chunk")
            os.kill(dev.proc.pid, signal.SIGSTOP)  # the server stops answering mid-job
            try:
                await redis.xadd(KEYS.cancels, {"job_id": "stuck"})
                final = await reader.terminal(within=120)
                assert final.state == JobState.CANCELLED
                assert _traces(tmp_path) == []
            finally:
                os.kill(dev.proc.pid, signal.SIGCONT)
        finally:
            await service.stop()
