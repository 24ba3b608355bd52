"""The client against the real thing: worker processes (`python -m worker run`), the devserver over
loopback, a real redis-server, local-folder and moto S3 blob stores."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from contracts import JobState, ProgressEvent, StatusEvent, TraceRequest
from contracts.client import JobFailed, TraceClient
from tests.client.helpers import blob_path
from tests.support.redis_server import RedisServer
from tests.support.s3 import S3Bucket
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def client(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[TraceClient]:
    async with TraceClient(
        redis_server.url, "t", max_connections=8, reconnect_timeout_s=60, file_root=tmp_path
    ) as c:
        yield c


async def test_many_concurrent_jobs_from_one_client(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    spawn_worker(
        worker_env(redis_server.url, devserver.url, blobs.as_uri(), TRACE_WORKER_WORKER_CONCURRENCY="4")
    )
    small = devserver.lake.processes[0].process_id
    requests = [
        TraceRequest(
            process_id=small, job_id=f"many-{i}", chunks=i % 3 != 0, span_types=("both", "thread")[i % 2]
        )
        for i in range(12)
    ]
    handles = await asyncio.gather(*(client.submit(r) for r in requests))
    outputs = [tmp_path / f"out-{i}.pftrace" for i in range(len(requests))]
    statuses = await asyncio.gather(
        *(h.download(out, timeout=240) for h, out in zip(handles, outputs, strict=True))
    )
    for request, out, status in zip(requests, outputs, statuses, strict=True):
        data = out.read_bytes()
        assert status.state == JobState.SUCCEEDED and len(data) == status.size
        assert hashlib.sha256(data).hexdigest() == status.sha256
        assert data == blob_path(blobs, request).read_bytes()
        assert (status.chunks or 0) > 0 if request.chunks else not status.chunks
    names = [c.get("name") for c in await client.redis.client_list()]
    assert names.count("trace-client-reader") == 1  # one reader for every job
    assert 1 <= names.count("trace-client") <= 8  # the command pool, never a connection per job


async def test_blob_only_from_s3_presigned_url(  # noqa: PLR0917 - fixtures
    client: TraceClient,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    s3_bucket: S3Bucket,
    tmp_path: Path,
) -> None:
    env = worker_env(redis_server.url, devserver.url, s3_bucket.url("traces"), **s3_bucket.s3.env())
    spawn_worker(env)
    request = TraceRequest(process_id=devserver.lake.processes[0].process_id, chunks=False, job_id="s3-only")
    job = await client.submit(request)
    status = await job.download(tmp_path / "s3.pftrace", timeout=120)
    assert status.url is not None and status.url.startswith("http://") and "X-Amz-Signature" in status.url
    data = (tmp_path / "s3.pftrace").read_bytes()
    key = f"traces/{request.process_id}/s3-only.pftrace"
    assert data == s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
    assert hashlib.sha256(data).hexdigest() == status.sha256
    entries: Any = await client.redis.xrange("t:job:{s3-only}")
    assert all(fields[b"type"] != b"chunk" for _, fields in entries)  # really blob-only


async def test_cancel_a_running_job(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "b").as_uri()))
    request = TraceRequest(process_id=devserver.lake.processes[1].process_id, job_id="to-cancel")
    job = await client.submit(request)
    async for event in job.events():
        if isinstance(event, ProgressEvent) or (isinstance(event, StatusEvent) and event.state == "running"):
            break
    await job.cancel()
    final = await job.wait(60)
    assert final.state == JobState.CANCELLED
    with pytest.raises(JobFailed, match="cancelled"):
        await job.download(tmp_path / "c.pftrace", timeout=30)
    assert not (tmp_path / "c.pftrace").exists()
    assert not blob_path(tmp_path / "b", request).exists()


async def test_restarted_attempt_after_a_worker_is_killed(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    env = worker_env(redis_server.url, devserver.url, (tmp_path / "b").as_uri())
    first = spawn_worker(env, "a")
    request = TraceRequest(process_id=devserver.lake.processes[1].process_id, job_id="killed")
    job = await client.submit(request)
    seen: list[StatusEvent | ProgressEvent] = []
    progressed = asyncio.Event()

    def on_event(event: StatusEvent | ProgressEvent) -> None:
        seen.append(event)
        if isinstance(event, ProgressEvent) and event.bytes > 0:
            progressed.set()

    download = asyncio.create_task(job.download(tmp_path / "k.pftrace", timeout=180, on_event=on_event))
    await asyncio.wait_for(progressed.wait(), 60)
    first.kill()  # SIGKILL mid-job: its chunks so far belong to an abandoned attempt
    first.wait(timeout=10)
    spawn_worker(env, "b")
    status = await download
    assert status.state == JobState.SUCCEEDED and status.attempt >= 2
    data = (tmp_path / "k.pftrace").read_bytes()
    assert hashlib.sha256(data).hexdigest() == status.sha256
    assert data == blob_path(tmp_path / "b", request).read_bytes()
    running = [e.attempt for e in seen if isinstance(e, StatusEvent) and e.state == JobState.RUNNING]
    assert running[0] == 1 and running[-1] == status.attempt


async def test_download_survives_a_redis_restart(
    devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    server = RedisServer(persistence=True).start()
    try:
        spawn_worker(worker_env(server.url, devserver.url, (tmp_path / "b").as_uri()))
        async with TraceClient(server.url, "t", reconnect_timeout_s=60) as client:
            request = TraceRequest(process_id=devserver.lake.processes[1].process_id, job_id="restart")
            job = await client.submit(request)
            progressed = asyncio.Event()

            def on_event(event: StatusEvent | ProgressEvent) -> None:
                if isinstance(event, ProgressEvent) and event.bytes > 0:
                    progressed.set()

            download = asyncio.create_task(
                job.download(tmp_path / "r.pftrace", timeout=180, on_event=on_event)
            )
            await asyncio.wait_for(progressed.wait(), 60)
            server.stop()  # every connection drops, the worker's and the client's
            server.start()
            status = await download
            assert status.state == JobState.SUCCEEDED
            data = (tmp_path / "r.pftrace").read_bytes()
            assert hashlib.sha256(data).hexdigest() == status.sha256
            assert data == blob_path(tmp_path / "b", request).read_bytes()
    finally:
        server.close()


async def test_gzip_blob_by_worker_default_is_downloaded_plain_and_verified(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    env = worker_env(redis_server.url, devserver.url, blobs.as_uri(), TRACE_WORKER_BLOB_COMPRESS="gzip")
    spawn_worker(env)
    request = TraceRequest(process_id=devserver.lake.processes[0].process_id, chunks=False, job_id="gz-only")
    assert "compress" not in request.to_json()  # the worker's setting decides
    status = await (await client.submit(request)).download(tmp_path / "gz.pftrace", timeout=120)
    stored = (blobs / request.process_id / "gz-only.pftrace.gz").read_bytes()
    assert status.encoding == "gzip" and status.uri is not None and status.uri.endswith(".pftrace.gz")
    assert stored[:2] == b"\x1f\x8b" and status.stored_size == len(stored)
    data = (tmp_path / "gz.pftrace").read_bytes()  # the client hands over the plain trace
    assert data == gzip.decompress(stored) and len(data) == status.size
    assert hashlib.sha256(data).hexdigest() == status.sha256
    assert len(stored) * 2 < len(data)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_either_event_loop_runs_jobs(  # noqa: PLR0917 - fixtures
    client: TraceClient,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    tmp_path: Path,
    loop: str,
) -> None:
    blobs = (tmp_path / "blobs").as_uri()
    spawn_worker(worker_env(redis_server.url, devserver.url, blobs, TRACE_WORKER_EVENT_LOOP=loop), name=loop)
    request = TraceRequest(process_id=devserver.lake.processes[0].process_id, job_id=f"on-{loop}")
    job = await client.submit(request)
    status = await job.download(tmp_path / "out.pftrace", timeout=120)
    data = (tmp_path / "out.pftrace").read_bytes()
    assert status.state == JobState.SUCCEEDED and hashlib.sha256(data).hexdigest() == status.sha256
    log = (tmp_path / f"worker-{loop}-0.log").read_text()
    assert f"{loop} event loop)" in log  # the worker's start line names the loop it runs on
