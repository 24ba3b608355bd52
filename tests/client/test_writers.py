"""download() into async and sync writers, against a real worker (issue 20 item 2): every kind
gets the whole verified trace, and a target that cannot take bytes is refused before anything."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest

from contracts import JobState, TraceRequest
from contracts.client import ClientError, InvalidRequest, TraceClient
from tests.client.helpers import blob_path
from tests.client.scripted import ScriptedWorker
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer


class AsyncSink:
    """An async writer (like an aiofiles file): write, seek, truncate and flush are coroutines."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.flushed = False

    async def write(self, data: bytes) -> int:
        await asyncio.sleep(0)  # really yields to the loop
        return self.buf.write(data)

    async def seek(self, offset: int) -> int:
        return self.buf.seek(offset)

    async def truncate(self, size: int) -> int:
        return self.buf.truncate(size)

    async def flush(self) -> None:
        self.flushed = True


class Trickle:
    """A sync writer taking at most 1000 bytes per call (like a raw file or a socket)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data[:1000]))
        return min(len(data), 1000)


async def test_async_and_sync_writers_get_the_verified_trace(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    spawn_worker(worker_env(redis_server.url, devserver.url, blobs.as_uri()))
    small = devserver.lake.processes[0].process_id
    chunked = TraceRequest(process_id=small, job_id="writers")
    blob_only = TraceRequest(process_id=small, job_id="writers-blob", chunks=False)
    await asyncio.gather(client.submit(chunked), client.submit(blob_only))
    for request in (chunked, blob_only):
        expected = blob_path(blobs, request)
        async_sink, trickle, plain = AsyncSink(), Trickle(), io.BytesIO()
        statuses = await asyncio.gather(
            *(client.job(request.job_id or "").download(t, timeout=120) for t in (async_sink, trickle, plain))
        )
        data = expected.read_bytes()
        assert all(
            s.state == JobState.SUCCEEDED and s.sha256 == hashlib.sha256(data).hexdigest() for s in statuses
        )
        assert async_sink.buf.getvalue() == data and async_sink.flushed
        assert b"".join(trickle.parts) == data
        assert plain.getvalue() == data


async def test_a_target_without_write_is_refused_before_anything(client: TraceClient) -> None:
    with pytest.raises(InvalidRequest, match="write"):
        await client.job("any").download(object())  # type: ignore[arg-type]


async def test_a_writer_that_takes_nothing_fails_the_download(
    client: TraceClient, worker: ScriptedWorker
) -> None:
    await worker.whole_job("nothing", b"x" * 5000)

    class Refuses:
        async def write(self, data: bytes) -> int:
            return 0

    with pytest.raises(ClientError, match="returned 0"):
        await client.job("nothing").download(Refuses(), timeout=30)
