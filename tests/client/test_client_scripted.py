"""The client against a real redis-server and scripted contract entries (narrow unit tests)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts import ChunkEvent, JobState, Keys, ProgressEvent, StatusEvent, TraceRequest
from contracts.client import ConnectionLost, JobFailed, TraceClient, TraceIntegrityError
from contracts.sync_client import SyncTraceClient
from tests.client.scripted import PID, ScriptedWorker
from tests.support.redis_server import RedisServer


def trace_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_submit_adds_the_request_entry(client: TraceClient, redis_server: RedisServer) -> None:
    request = TraceRequest(process_id=PID, labels={"requested_by": "test"}, chunks=False)
    job = await client.submit(request)
    assert job.job_id == request.effective_job_id()
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.redis.xrange("t:requests")  # type: ignore[assignment]
    assert len(entries) == 1
    assert TraceRequest.from_json(entries[0][1][b"request"]) == request


async def test_download_chunks_and_events(
    client: TraceClient, worker: ScriptedWorker, tmp_path: Path
) -> None:
    data = trace_bytes(10_500)
    job = await client.submit(TraceRequest(process_id=PID, job_id="j1"))
    await worker.whole_job("j1", data)
    seen: list[StatusEvent | ProgressEvent] = []
    status = await job.download(tmp_path / "t.pftrace", timeout=10, on_event=seen.append)
    assert (tmp_path / "t.pftrace").read_bytes() == data
    assert not (tmp_path / "t.pftrace.part").exists()
    assert status.state == JobState.SUCCEEDED and status.size == len(data)
    assert [e.type for e in seen] == ["status", "status", "progress", "status"]
    events = [e async for e in job.events()]
    assert [getattr(e, "state", "progress") for e in events] == ["queued", "running", "progress", "succeeded"]


async def test_joining_late_still_gets_everything(client: TraceClient, worker: ScriptedWorker) -> None:
    data = trace_bytes(5000, seed=3)
    await worker.whole_job("late", data)
    buf = io.BytesIO()
    await client.job("late").download(buf, timeout=10)
    assert buf.getvalue() == data


async def test_restarted_attempt_drops_the_abandoned_chunks(
    client: TraceClient, worker: ScriptedWorker, tmp_path: Path
) -> None:
    old, new = trace_bytes(7000, seed=1), trace_bytes(9000, seed=2)
    job = client.job("r1")
    download = asyncio.create_task(job.download(tmp_path / "r.pftrace", timeout=10))
    await worker.status("r1", JobState.RUNNING, 1)
    await worker.chunks("r1", old[:4000], 1, last=False)  # attempt 1 dies half-way
    await worker.status("r1", JobState.RUNNING, 2)
    await worker.chunks("r1", old[4000:5000], 1, last=False)  # a zombie of attempt 1 writes on
    await worker.progress("r1", 1, 99.0)
    await worker.chunks("r1", new, 2)
    await worker.succeed("r1", new, 2)
    status = await download
    assert status.attempt == 2
    assert (tmp_path / "r.pftrace").read_bytes() == new
    events = [e async for e in job.events()]
    assert all(not (isinstance(e, ProgressEvent) and e.attempt == 1) for e in events[2:])


async def test_restart_after_bytes_went_to_a_non_seekable_writable_is_a_clear_error(
    client: TraceClient, worker: ScriptedWorker
) -> None:
    class Pipe:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> int:
            self.data += data
            return len(data)

    await worker.status("p1", JobState.RUNNING, 1)
    await worker.chunks("p1", b"x" * 3000, 1, last=False)
    await worker.status("p1", JobState.RUNNING, 2)
    with pytest.raises(Exception, match="cannot seek; download again"):
        await client.job("p1").download(Pipe(), timeout=10)


async def test_blob_only_fetch_verifies_the_checksum(
    client: TraceClient, worker: ScriptedWorker, tmp_path: Path
) -> None:
    data = trace_bytes(123_456, seed=5)
    blob = tmp_path / "store" / "b1.pftrace"
    blob.parent.mkdir()
    blob.write_bytes(data)
    job = await client.submit(TraceRequest(process_id=PID, job_id="b1", chunks=False))
    await worker.status("b1", JobState.RUNNING, 1)
    await worker.succeed("b1", data, 1, uri=blob.as_uri(), url=blob.as_uri(), chunks=0)
    status = await job.download(tmp_path / "out.pftrace", timeout=10)
    assert status.sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out.pftrace").read_bytes() == data


async def test_blob_only_checksum_mismatch_leaves_no_file(
    client: TraceClient, worker: ScriptedWorker, tmp_path: Path
) -> None:
    data = trace_bytes(2000)
    blob = tmp_path / "b2.pftrace"
    blob.write_bytes(data[:-1] + b"!")  # corrupted object
    await worker.succeed("b2", data, 1, uri=blob.as_uri(), url=blob.as_uri())
    with pytest.raises(TraceIntegrityError, match="sha256"):
        await client.job("b2").download(tmp_path / "out.pftrace", timeout=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2.pftrace"]  # noqa: ASYNC240


async def test_chunk_size_mismatch_is_detected(client: TraceClient, worker: ScriptedWorker) -> None:
    data = trace_bytes(3000)
    await worker.status("s1", JobState.RUNNING, 1)
    await worker.chunks("s1", data, 1)
    await worker.succeed("s1", data + b"more", 1)
    with pytest.raises(TraceIntegrityError, match="received 3000 bytes"):
        await client.job("s1").download(io.BytesIO(), timeout=10)


async def test_a_missing_chunk_is_detected(client: TraceClient, worker: ScriptedWorker) -> None:
    data = trace_bytes(3000)
    await worker.status("g1", JobState.RUNNING, 1)
    await worker.chunks("g1", data, 1)
    entries: list[tuple[bytes, object]] = await worker.redis.xrange("t:job:{g1}")  # type: ignore[assignment]
    await worker.redis.xdel("t:job:{g1}", entries[2][0])  # the second chunk vanishes
    await worker.succeed("g1", data, 1)
    with pytest.raises(TraceIntegrityError, match="expected seq 1"):
        await client.job("g1").download(io.BytesIO(), timeout=10)


async def test_failed_job(client: TraceClient, worker: ScriptedWorker, tmp_path: Path) -> None:
    await worker.status("f1", JobState.RUNNING, 1)
    await worker.status(
        "f1", JobState.FAILED, 1, error_code="process_not_found", message="no process 34d7", retryable=False
    )
    with pytest.raises(JobFailed, match="process_not_found: no process 34d7") as info:
        await client.job("f1").download(tmp_path / "f.pftrace", timeout=10)
    assert info.value.status.state == JobState.FAILED
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240
    assert (await client.job("f1").wait(5)).state == JobState.FAILED


async def test_resubmitting_a_failed_job_follows_only_the_new_run(
    client: TraceClient, worker: ScriptedWorker
) -> None:
    request = TraceRequest(process_id=PID, job_id="again")
    await worker.status("again", JobState.RUNNING, 1)
    await worker.status("again", JobState.FAILED, 1, error_code="source_unavailable", message="down")
    job = await client.submit(request)
    data = trace_bytes(1500)
    await worker.status("again", JobState.RUNNING, 2)
    await worker.chunks("again", data, 2)
    await worker.succeed("again", data, 2)
    buf = io.BytesIO()
    status = await job.download(buf, timeout=10)
    assert status.state == JobState.SUCCEEDED and buf.getvalue() == data


async def test_wait_times_out(client: TraceClient, worker: ScriptedWorker) -> None:
    await worker.status("w1", JobState.RUNNING, 1)
    with pytest.raises(TimeoutError):
        await client.job("w1").wait(timeout=0.3)


async def test_cancel_and_state(client: TraceClient, worker: ScriptedWorker) -> None:
    job = client.job("c1")
    assert await job.state() is None
    await worker.status("c1", JobState.RUNNING, 3)
    state = await job.state()
    assert state is not None and (state.state, state.attempt) == (JobState.RUNNING, 3)
    assert await job.cancel(timeout=0.2) is None  # no worker answers the scripted job
    entries: Any = await client.redis.xrange("t:cancels")
    assert [fields for _, fields in entries] == [{b"job_id": b"c1"}]  # an entry, never a key
    assert not await client.redis.exists("t:job:{c1}:cancel")


async def test_recent_jobs(client: TraceClient, worker: ScriptedWorker) -> None:
    for i in range(5):
        await worker.status(f"e{i}", JobState.RUNNING, 1)
    await worker.status("e1", JobState.SUCCEEDED, 1)
    recent = await client.recent_jobs(3)
    assert [(s.job_id, s.state) for s in recent] == [
        ("e1", JobState.SUCCEEDED),
        ("e4", JobState.RUNNING),
        ("e3", JobState.RUNNING),
    ]


async def test_hundreds_of_jobs_share_one_reader_and_a_small_pool(
    redis_server: RedisServer, worker: ScriptedWorker
) -> None:
    n = 300
    async with TraceClient(redis_server.url, "t", max_connections=8) as client:
        handles = [await client.submit(TraceRequest(process_id=PID, job_id=f"m{i}")) for i in range(n)]
        buffers = [io.BytesIO() for _ in range(n)]
        downloads = [
            asyncio.create_task(h.download(b, timeout=60)) for h, b in zip(handles, buffers, strict=True)
        ]
        for i in range(n):
            await worker.whole_job(f"m{i}", trace_bytes(3000 + i, seed=i), chunk_size=700)
        await asyncio.gather(*downloads)
        assert all(b.getvalue() == trace_bytes(3000 + i, seed=i) for i, b in enumerate(buffers))
        clients = await client.redis.client_list()
        # the test's own worker connection + the client's pool (<= 8) + its one reader connection
        assert len(clients) <= 1 + 8 + 1


async def test_follower_resumes_after_redis_restarts(tmp_path: Path) -> None:
    server = RedisServer(persistence=True).start()
    try:
        async with TraceClient(server.url, "t", reconnect_timeout_s=30) as client:
            job = client.job("x1")
            received: list[StatusEvent | ProgressEvent] = []
            got_first = asyncio.Event()

            def on_event(event: StatusEvent | ProgressEvent) -> None:
                received.append(event)
                got_first.set()

            download = asyncio.create_task(
                job.download(tmp_path / "x.pftrace", timeout=60, on_event=on_event)
            )
            data = trace_bytes(50_000, seed=9)
            redis = aioredis.Redis.from_url(server.url)
            worker = ScriptedWorker(redis, client.keys)
            await worker.status("x1", JobState.RUNNING, 1)
            await worker.chunks("x1", data[:20_000], 1, size=5000, last=False)
            await asyncio.wait_for(got_first.wait(), 10)
            await redis.aclose()
            server.stop()  # the reader's connection drops mid-job
            server.start()
            redis = aioredis.Redis.from_url(server.url)
            worker = ScriptedWorker(redis, client.keys)
            rest = data[20_000:]
            for seq, start in enumerate(range(0, len(rest), 5000), start=4):
                fields = ChunkEvent(
                    job_id="x1",
                    attempt=1,
                    seq=seq,
                    offset=20_000 + start,
                    data=rest[start : start + 5000],
                    last=start + 5000 >= len(rest),
                ).to_fields()
                await redis.xadd("t:job:{x1}", fields)  # type: ignore[arg-type]
            await worker.succeed("x1", data, 1)
            await redis.aclose()
            status = await download
            assert status.state == JobState.SUCCEEDED
            assert (tmp_path / "x.pftrace").read_bytes() == data
            assert [e.type for e in received] == ["status", "status"]  # no entry delivered twice
    finally:
        server.close()


def test_sync_client(redis_server: RedisServer, tmp_path: Path) -> None:
    data = trace_bytes(4000)

    async def script() -> None:
        redis = aioredis.Redis.from_url(redis_server.url)
        await ScriptedWorker(redis, Keys("t")).whole_job("sync1", data)
        await redis.aclose()

    with SyncTraceClient(redis_server.url, "t") as client:
        job = client.submit(TraceRequest(process_id=PID, job_id="sync1"))
        asyncio.run(script())
        assert job.download(tmp_path / "s.pftrace", timeout=10).state == JobState.SUCCEEDED
        assert (tmp_path / "s.pftrace").read_bytes() == data
        assert [getattr(e, "state", "progress") for e in job.events()][-1] == JobState.SUCCEEDED
        state = job.state()
        assert state is not None and state.state == JobState.SUCCEEDED
        assert client.recent_jobs(1)[0].job_id == "sync1"


async def test_a_stalled_follower_blocks_nobody_and_buffers_little(
    client: TraceClient, worker: ScriptedWorker
) -> None:
    await worker.whole_job("stall", trace_bytes(2_000_000), chunk_size=10_000)  # 200 chunk entries
    first_write = asyncio.Event()

    class Stuck:
        async def write(self, data: bytes) -> int:
            first_write.set()
            await asyncio.Event().wait()  # takes the first chunk, then never returns
            return len(data)

    stalled = asyncio.create_task(client.job("stall").download(Stuck()))
    await asyncio.wait_for(first_write.wait(), 30)
    data = trace_bytes(50_000, seed=4)
    await worker.whole_job("other", data, chunk_size=1000)
    buf = io.BytesIO()
    await client.job("other").download(buf, timeout=10)
    assert buf.getvalue() == data
    (sub,) = client._mux._subs["t:job:{stall}"]
    assert 0 < sub.queue.qsize() <= client._mux.BACKLOG  # not the 200 entries of its stream
    stalled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stalled
    assert "t:job:{stall}" not in client._mux._subs


async def test_follower_gets_connection_lost_when_redis_stays_down() -> None:
    server = RedisServer().start()
    try:
        async with TraceClient(server.url, "t", reconnect_timeout_s=1.0) as client:
            job = client.job("gone")
            running: Any = StatusEvent(job_id="gone", state=JobState.RUNNING).to_fields()
            await client.redis.xadd("t:job:{gone}:status", running)
            follow = asyncio.create_task(job.wait(timeout=30))
            server.stop()
            with pytest.raises(ConnectionLost, match=r"Redis unreachable|cannot reach Redis"):
                await follow
    finally:
        server.close()


async def test_resp2_servers_and_proxies_work_too(redis_server: RedisServer, worker: ScriptedWorker) -> None:
    data = trace_bytes(20_000, seed=8)
    await worker.whole_job("resp2", data)
    async with TraceClient(redis_server.url + "?protocol=2", "t") as client:
        assert isinstance(client.redis, aioredis.Redis)
        assert client.redis.connection_pool.connection_kwargs["protocol"] == 2
        buf = io.BytesIO()
        status = await client.job("resp2").download(buf, timeout=10)
        assert buf.getvalue() == data and status.state == JobState.SUCCEEDED
        state = await client.job("resp2").state()
        assert state is not None and state.state == JobState.SUCCEEDED
        assert [s.job_id for s in await client.recent_jobs(1)] == ["resp2"]
