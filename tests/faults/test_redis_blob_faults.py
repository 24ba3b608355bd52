"""Redis and blob-store faults under a worker process: Redis killed and restarted with persistence
mid-job, Redis unreachable for a while (chaos proxy), a blob folder that refuses a write, an S3
bucket deleted mid-job, a full disk (file-size limit). Each ends in recovery or a clear terminal
state, and the worker keeps serving other jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts import ErrorCode, JobState, TraceRequest
from contracts.request import SpanTypes
from tests.faults.storm import reference_traces
from tests.faults.workers import KEYS, full_disk_worker, run_job, succeeded_bytes
from tests.service.support import JobReader, submit
from tests.support.chaos import ChaosProxy
from tests.support.redis_server import RedisServer
from tests.support.s3 import S3Bucket
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer
from worker.service.job import blob_key


@pytest.fixture
def flight_proxy(mixed_devserver: DevServer) -> Iterator[ChaosProxy]:
    with ChaosProxy(("127.0.0.1", mixed_devserver.port)) as p:
        yield p


def _procs(server: DevServer) -> dict[str, str]:
    return {p.kind: p.process_id for p in server.lake.processes}


def _fast(**more: str) -> dict[str, str]:
    return {"TRACE_WORKER_RETRY_MAX": "2", "TRACE_WORKER_RETRY_BACKOFF_MAX_S": "0.3", **more}


async def _retrying(op: Any) -> Any:
    """The test's own client sees Redis go away too: retry its read until the server is back."""
    for _ in range(100):
        try:
            return await op()
        except (RedisConnectionError, ConnectionError, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("redis did not come back")


async def test_redis_killed_and_restarted_with_persistence_mid_job(
    mixed_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    server = RedisServer(persistence=True).start()
    redis = Redis.from_url(server.url)
    blobs = tmp_path / "blobs"
    procs = _procs(mixed_devserver)
    requests = [
        TraceRequest(process_id=procs[kind], job_id=f"restart-{kind}")
        for kind in ("typical", "wide", "small")
    ]
    try:
        worker = spawn_worker(worker_env(server.url, mixed_devserver.url, blobs.as_uri(), **_fast()))
        readers = [JobReader(redis, KEYS, r.effective_job_id()) for r in requests]
        for request in requests:
            await submit(redis, KEYS, request)
        await readers[0].read_until(lambda e: e.type == "chunk", within=120)
        server.stop()  # SIGKILL: what a crash looks like; the AOF (fsync always) keeps every write
        server.start()
        finals = [await _retrying(lambda r=r: r.terminal(within=120)) for r in readers]
        reference = await reference_traces(mixed_devserver, requests)
        for request, final, reader in zip(requests, finals, readers, strict=True):
            data = succeeded_bytes(final, reader, blobs, request)
            assert data == reference[request.effective_job_id()]
        pending: Any = await redis.xpending(KEYS.requests, KEYS.group)
        assert pending["pending"] == 0
        assert worker.poll() is None
    finally:
        await redis.aclose()
        server.close()


async def test_redis_unreachable_for_a_while(
    redis_server: RedisServer, redis: Redis, mixed_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    procs = _procs(mixed_devserver)
    with ChaosProxy(("127.0.0.1", redis_server.port)) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        # No retries: a Redis outage is not the job's failure and must not spend them.
        env = worker_env(url, mixed_devserver.url, blobs.as_uri(), **_fast(TRACE_WORKER_RETRY_MAX="0"))
        worker = spawn_worker(env)
        first = TraceRequest(process_id=procs["typical"], job_id="through-outage")
        reader = JobReader(redis, KEYS, first.effective_job_id())
        await submit(redis, KEYS, first)
        await reader.read_until(lambda e: e.type == "chunk", within=120)
        proxy.set_refusing(True)
        accepted = proxy.accepted
        log = tmp_path / "worker-w-0.log"
        deadline = time.monotonic() + 120
        # Unreachable until the worker tried to reconnect (and was refused) 3 times and the job's
        # attempt itself failed on it ("redis unavailable: ..." is that attempt's failure).
        while proxy.accepted < accepted + 3 or "redis unavailable: " not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the worker never noticed the outage"
            await asyncio.sleep(0.05)
        proxy.set_refusing(False)
        final = await reader.terminal(within=120)
        succeeded_bytes(final, reader, blobs, first)
        assert final.attempt >= 2  # the outage cost attempts, not the job its (zero) retries
        after, after_reader = await run_job(
            redis, TraceRequest(process_id=procs["small"], job_id="after-outage")
        )
        succeeded_bytes(
            after, after_reader, blobs, TraceRequest(process_id=procs["small"], job_id="after-outage")
        )
        assert worker.poll() is None


async def test_blob_folder_refusing_a_write_fails_clearly(
    redis_server: RedisServer, redis: Redis, mixed_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    procs = _procs(mixed_devserver)
    blocked = TraceRequest(process_id=procs["wide"], job_id="blocked")
    healthy = TraceRequest(process_id=procs["small"], job_id="healthy")
    # A file where the process's folder must go: every write under it fails (as root, permission
    # bits would not stop us; this does).
    (blobs / blocked.process_id).write_bytes(b"not a folder")
    worker = spawn_worker(worker_env(redis_server.url, mixed_devserver.url, blobs.as_uri(), **_fast()))
    (final, _), (ok, ok_reader) = await asyncio.gather(run_job(redis, blocked), run_job(redis, healthy))
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.BLOB_STORE_ERROR
    assert final.retryable and final.message and str(blobs) in final.message
    succeeded_bytes(ok, ok_reader, blobs, healthy)
    (blobs / blocked.process_id).unlink()
    again, again_reader = await run_job(redis, blocked)  # resubmitted once the store is fixed
    succeeded_bytes(again, again_reader, blobs, blocked)
    assert worker.poll() is None


async def test_full_disk_fails_clearly_and_small_jobs_still_succeed(
    redis_server: RedisServer, redis: Redis, mixed_devserver: DevServer, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    procs = _procs(mixed_devserver)
    big = TraceRequest(process_id=procs["typical"], job_id="too-big-for-disk")
    small = TraceRequest(process_id=procs["small"], job_id="fits", span_types=SpanTypes.THREAD)
    env = worker_env(redis_server.url, mixed_devserver.url, blobs.as_uri(), **_fast())
    logs = tmp_path / "logs"
    logs.mkdir()
    with full_disk_worker(env, logs / "worker.log", max_file_bytes=1_000_000) as worker:
        final, _ = await run_job(redis, big)
        assert final.state == JobState.FAILED and final.error_code == ErrorCode.BLOB_STORE_ERROR
        assert final.message and "too large" in final.message.lower()
        ok, ok_reader = await run_job(redis, small)
        data = succeeded_bytes(ok, ok_reader, blobs, small)
        assert len(data) < 1_000_000
        assert not (blobs / blob_key(big, big.effective_job_id())).exists()
        assert worker.poll() is None


async def test_s3_bucket_deleted_mid_job(  # noqa: PLR0917 - fixtures
    redis_server: RedisServer,
    redis: Redis,
    mixed_devserver: DevServer,
    flight_proxy: ChaosProxy,
    spawn_worker: Spawn,
    s3_bucket: S3Bucket,
) -> None:
    procs = _procs(mixed_devserver)
    env = worker_env(
        redis_server.url,
        f"grpc://127.0.0.1:{flight_proxy.port}",
        s3_bucket.url("traces"),
        **s3_bucket.s3.env(),
        **_fast(),
    )
    worker = spawn_worker(env)
    request = TraceRequest(process_id=procs["typical"], job_id="bucket-gone")
    reader = JobReader(redis, KEYS, request.effective_job_id())
    await submit(redis, KEYS, request)
    await reader.read_until(lambda e: e.type == "chunk", within=120)
    flight_proxy.set_mode("stall")  # hold the job mid-way while the bucket goes
    s3_bucket.client.delete_bucket(Bucket=s3_bucket.name)
    flight_proxy.set_mode("pass")
    final = await reader.terminal(within=120)
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.BLOB_STORE_ERROR
    assert final.retryable and final.message and s3_bucket.name in final.message
    s3_bucket.client.create_bucket(Bucket=s3_bucket.name)
    again, again_reader = await run_job(redis, request)
    assert again.state == JobState.SUCCEEDED, again.message
    assert (
        again_reader.trace_bytes(again.attempt)
        == s3_bucket.client.get_object(
            Bucket=s3_bucket.name, Key=f"traces/{blob_key(request, request.effective_job_id())}"
        )["Body"].read()
    )
    assert s3_bucket.pending_uploads() == []
    assert worker.poll() is None
