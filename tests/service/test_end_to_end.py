"""The whole service end to end: real redis-server, the devserver (Flight SQL over loopback), the
Flight SQL pipeline, and real blob stores (local folder, moto S3). Requests and replies go through
a raw Redis client only, as a non-Python requester would."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, Keys, TraceRequest
from tests.service.support import JobReader, fast_settings, submit
from tests.support.devserver import small_lake, start_devserver
from tests.support.redis_server import RedisServer
from tests.support.s3 import S3Bucket
from worker.devserver import DevServer
from worker.perfetto_pb import pb
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.settings import Settings
from worker.sinks.blob import blob_store_from_settings

KEYS = Keys("t")


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    with start_devserver(small_lake(processes=("small", "wide")), mode="micromegas") as server:
        yield server


def _settings(redis_url: str, flight_url: str, blob_url: str, **more: Any) -> Settings:
    return fast_settings(redis_url, flightsql_url=flight_url, blob_url=blob_url, chunk_size=64 * 1024, **more)


async def _run_job(settings: Settings, redis: Redis, request: TraceRequest) -> tuple[JobReader, Any]:
    service = Service(
        settings, generator=PipelineGenerator(settings), store=blob_store_from_settings(settings)
    )
    await service.start()
    try:
        reader = JobReader(redis, KEYS, request.effective_job_id())
        await submit(redis, KEYS, request)
        final = await reader.terminal(within=120)
        return reader, final
    finally:
        await service.stop()


def _traces(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*.pftrace"))


def _packets(data: bytes) -> int:
    trace = pb.Trace()
    trace.ParseFromString(data)
    return len(trace.packet)


async def test_job_to_local_folder(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, tmp_path: Path
) -> None:
    process = devserver.lake.processes[0]
    settings = _settings(redis_server.url, devserver.url, f"file://{tmp_path}")
    req = TraceRequest(process_id=process.process_id, labels={"channel": "#perf"})
    reader, final = await _run_job(settings, redis, req)
    assert final.state == JobState.SUCCEEDED, final
    data = reader.trace_bytes(final.attempt)
    blob = (tmp_path / process.process_id / f"{req.effective_job_id()}.pftrace").read_bytes()
    assert data == blob and len(blob) == final.size
    assert hashlib.sha256(blob).hexdigest() == final.sha256
    assert final.chunks >= 2 and final.spans and final.spans > 0
    assert _packets(blob) > final.spans  # one packet per span at least, plus descriptors
    assert final.packets == _packets(blob)
    assert final.uri.startswith("file://") and final.labels == {"channel": "#perf"}


async def test_job_to_s3(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, s3_bucket: S3Bucket
) -> None:
    process = devserver.lake.processes[1]
    blob_opts = s3_bucket.s3.options()
    settings = _settings(
        redis_server.url,
        devserver.url,
        s3_bucket.url("traces"),
        blob_s3_endpoint=blob_opts["endpoint"],
        blob_s3_region=blob_opts["region"],
        blob_s3_access_key_id=blob_opts["access_key_id"],
        blob_s3_secret_access_key=blob_opts["secret_access_key"],
        blob_s3_allow_http=True,
    )
    req = TraceRequest(process_id=process.process_id, span_types="thread")
    reader, final = await _run_job(settings, redis, req)
    assert final.state == JobState.SUCCEEDED, final
    data = reader.trace_bytes(final.attempt)
    key = f"traces/{process.process_id}/{req.effective_job_id()}.pftrace"
    assert key in s3_bucket.object_keys() and s3_bucket.pending_uploads() == []
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
    assert body == data and hashlib.sha256(body).hexdigest() == final.sha256
    assert final.url is not None and final.url.startswith("http")


async def test_unknown_process_fails_at_once(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, tmp_path: Path
) -> None:
    settings = _settings(redis_server.url, devserver.url, f"file://{tmp_path}")
    req = TraceRequest(process_id="00000000-0000-4000-8000-000000000000")
    _, final = await _run_job(settings, redis, req)
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.PROCESS_NOT_FOUND
    assert final.retryable is False and final.attempt == 1
    assert _traces(tmp_path) == []


async def test_limits_fail_with_clear_codes(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, tmp_path: Path
) -> None:
    process = devserver.lake.processes[0]
    settings = _settings(redis_server.url, devserver.url, f"file://{tmp_path}", max_spans=100)
    _, final = await _run_job(settings, redis, TraceRequest(process_id=process.process_id, job_id="big"))
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.TRACE_TOO_LARGE
    settings = _settings(redis_server.url, devserver.url, f"file://{tmp_path}", max_range_s=0.001)
    _, final = await _run_job(settings, redis, TraceRequest(process_id=process.process_id, job_id="long"))
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.RANGE_TOO_LONG
    assert _traces(tmp_path) == []


async def test_gzip_blob_keeps_plain_chunks_size_and_sha256(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, tmp_path: Path
) -> None:
    process = devserver.lake.processes[0]
    settings = _settings(redis_server.url, devserver.url, f"file://{tmp_path}")
    req = TraceRequest(process_id=process.process_id, compress="gzip")
    assert req.effective_job_id() != TraceRequest(process_id=process.process_id).effective_job_id()
    reader, final = await _run_job(settings, redis, req)
    assert final.state == JobState.SUCCEEDED, final
    data = reader.trace_bytes(final.attempt)  # chunks stay plain
    stored = (tmp_path / process.process_id / f"{req.effective_job_id()}.pftrace.gz").read_bytes()
    assert final.encoding == "gzip" and final.stored_size == len(stored) < len(data)
    assert gzip.decompress(stored) == data and len(data) == final.size
    assert hashlib.sha256(data).hexdigest() == final.sha256
    assert _traces(tmp_path) == []  # no plain object beside it
    # The same request run again gives the same object (no time or name in the gzip header).
    _, again = await _run_job(settings, redis, req.model_copy(update={"job_id": "gz-again"}))
    assert (tmp_path / process.process_id / "gz-again.pftrace.gz").read_bytes() == stored
    assert again.sha256 == final.sha256
