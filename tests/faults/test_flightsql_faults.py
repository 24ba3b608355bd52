"""Flight SQL faults between a worker process and the devserver (through the chaos proxy): a stream
cut mid-way (once: recovery; always: a clear failure), the service stalled or slowed to a trickle
(the batch timeout or the job timeout ends it), the service unreachable. After each, the same
worker serves other jobs and a failed job can be resubmitted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, TraceRequest
from contracts.request import SpanTypes
from tests.faults.storm import reference_traces
from tests.faults.workers import run_job, succeeded_bytes
from tests.support.chaos import ChaosProxy, Mode
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer


@pytest.fixture
def proxy(mixed_devserver: DevServer) -> Iterator[ChaosProxy]:
    with ChaosProxy(("127.0.0.1", mixed_devserver.port)) as p:
        yield p


def _requests(server: DevServer, tag: str) -> tuple[TraceRequest, TraceRequest]:
    """A big job (the 100k-span process) and a small healthy one."""
    procs = {p.kind: p for p in server.lake.processes}
    big = TraceRequest(process_id=procs["typical"].process_id, job_id=f"big-{tag}")
    small = TraceRequest(
        process_id=procs["small"].process_id, job_id=f"small-{tag}", span_types=SpanTypes.THREAD
    )
    return big, small


def _env(redis_server: RedisServer, proxy: ChaosProxy, blobs: Path, **more: str) -> dict[str, str]:
    return worker_env(
        redis_server.url,
        f"grpc://127.0.0.1:{proxy.port}",
        blobs.as_uri(),
        TRACE_WORKER_RETRY_MAX="2",
        TRACE_WORKER_RETRY_BACKOFF_MAX_S="0.3",
        **more,
    )


async def test_stream_cut_once_recovers_with_correct_bytes(  # noqa: PLR0917 - fixtures
    redis_server: RedisServer,
    redis: Redis,
    mixed_devserver: DevServer,
    proxy: ChaosProxy,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    blobs = tmp_path / "blobs"
    worker = spawn_worker(_env(redis_server, proxy, blobs))
    big, small = _requests(mixed_devserver, "cut-once")
    proxy.cut_after(300_000, once=True)  # the first connection past 300 kB dies mid-stream
    final, reader = await run_job(redis, big)
    assert proxy.cuts == 1
    assert final.attempt >= 2  # attempt 1 broke, a later one finished
    data = succeeded_bytes(final, reader, blobs, big)
    small_final, small_reader = await run_job(redis, small)
    small_data = succeeded_bytes(small_final, small_reader, blobs, small)
    reference = await reference_traces(mixed_devserver, [big, small])
    assert data == reference[big.effective_job_id()] and small_data == reference[small.effective_job_id()]
    assert worker.poll() is None


async def test_stream_cut_always_fails_clearly_then_resubmission_succeeds(  # noqa: PLR0917 - fixtures
    redis_server: RedisServer,
    redis: Redis,
    mixed_devserver: DevServer,
    proxy: ChaosProxy,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    blobs = tmp_path / "blobs"
    worker = spawn_worker(_env(redis_server, proxy, blobs))
    big, small = _requests(mixed_devserver, "cut-always")
    proxy.cut_after(300_000)
    started = time.monotonic()
    final, _ = await run_job(redis, big)
    assert time.monotonic() - started < 30
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.SOURCE_BROKEN
    assert final.retryable and final.message and "thread spans query" in final.message
    assert final.attempt == 3  # retry_max=2: three attempts, then the clear failure
    assert not (blobs / big.process_id).exists() or not any((blobs / big.process_id).iterdir())
    proxy.cut_after(None)
    small_final, small_reader = await run_job(redis, small)
    succeeded_bytes(small_final, small_reader, blobs, small)
    # a failed job can be resubmitted under the same job id: it runs again, as attempt 4
    again, again_reader = await run_job(redis, big)
    succeeded_bytes(again, again_reader, blobs, big)
    assert again.attempt == 4
    assert worker.poll() is None


@pytest.mark.parametrize("mode", ["stall", "trickle"])
async def test_stalled_or_trickling_service_ends_in_timeout(  # noqa: PLR0917 - fixtures
    redis_server: RedisServer,
    redis: Redis,
    mixed_devserver: DevServer,
    proxy: ChaosProxy,
    spawn_worker: Spawn,
    tmp_path: Path,
    mode: Mode,
) -> None:
    blobs = tmp_path / "blobs"
    worker = spawn_worker(_env(redis_server, proxy, blobs, TRACE_WORKER_JOB_TIMEOUT_S="4"))
    big, small = _requests(mixed_devserver, mode)
    proxy.set_mode(mode, trickle_bps=20_000)
    started = time.monotonic()
    final, _ = await run_job(redis, big, within=120)
    assert time.monotonic() - started < 20  # bounded by job_timeout_s, not by the fault
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.TIMEOUT
    assert final.message and "job_timeout_s=4" in final.message
    proxy.set_mode("pass")
    small_final, small_reader = await run_job(redis, small)
    succeeded_bytes(small_final, small_reader, blobs, small)
    assert worker.poll() is None


async def test_stalled_service_fails_after_the_batch_timeout_then_serves(  # noqa: PLR0917 - fixtures
    redis_server: RedisServer,
    redis: Redis,
    mixed_devserver: DevServer,
    proxy: ChaosProxy,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    """With a batch timeout, a stalled service ends the job as retryable source_broken long before
    the job timeout (an hour here), and the worker serves again once the service answers."""
    blobs = tmp_path / "blobs"
    env = _env(redis_server, proxy, blobs, TRACE_WORKER_FLIGHTSQL_BATCH_TIMEOUT_S="1")
    worker = spawn_worker(env)
    big, small = _requests(mixed_devserver, "batch-timeout")
    proxy.set_mode("stall")
    started = time.monotonic()
    final, _ = await run_job(redis, big, within=120)
    assert time.monotonic() - started < 30
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.SOURCE_BROKEN, final
    assert final.retryable is True
    assert final.message and "sent nothing for 1 s" in final.message
    proxy.set_mode("pass")
    small_final, small_reader = await run_job(redis, small, within=120)
    succeeded_bytes(small_final, small_reader, blobs, small)
    assert worker.poll() is None


async def test_unreachable_service_fails_clearly_then_serves(  # noqa: PLR0917 - fixtures
    redis_server: RedisServer,
    redis: Redis,
    mixed_devserver: DevServer,
    proxy: ChaosProxy,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    blobs = tmp_path / "blobs"
    worker = spawn_worker(_env(redis_server, proxy, blobs))
    big, small = _requests(mixed_devserver, "refused")
    proxy.set_refusing(True)
    started = time.monotonic()
    final, _ = await run_job(redis, small, within=120)
    assert time.monotonic() - started < 45
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.SOURCE_UNAVAILABLE
    assert final.retryable and final.attempt == 3
    proxy.set_refusing(False)
    for request in (big, small):
        done, reader = await run_job(redis, request)
        succeeded_bytes(done, reader, blobs, request)
    assert worker.poll() is None
