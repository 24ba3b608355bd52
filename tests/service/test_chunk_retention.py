"""Chunk retention apart from status retention (issue 10 item 6): the job stream (chunk bytes)
expires ``chunk_ttl_s`` after the job ends, ``:status`` and ``:state`` keep ``job_ttl_s``; a
succeeded job whose chunks expired is still downloaded (from its blob, sha256 verified) and a
duplicate request is answered with the blob's location, the recreated job stream expiring again."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from contracts import JobState, Keys, TraceRequest
from contracts.client import TraceClient, TraceIntegrityError
from tests.service.support import PID, JobReader, ScriptedGenerator, fast_settings, submit, wait_until
from tests.support.redis_server import RedisServer
from worker.service.app import Service
from worker.sinks.blob.local import LocalBlobStore

KEYS = Keys("t")


async def test_chunks_expire_before_statuses(redis_server: RedisServer, redis: Redis, tmp_path: Path) -> None:
    gen = ScriptedGenerator(chunks=4)
    store = LocalBlobStore(tmp_path / "blobs")
    settings = fast_settings(redis_server.url, chunk_ttl_s=1, job_ttl_s=3600)
    service = Service(settings, generator=gen, store=store)
    await service.start()
    try:
        req = TraceRequest(process_id=PID, job_id="short-chunks")
        await submit(redis, KEYS, req)
        final = await JobReader(redis, KEYS, "short-chunks").terminal()
        assert final.state == JobState.SUCCEEDED and final.chunks == 4
        assert 0 < await redis.pttl(KEYS.job("short-chunks")) <= 1000
        assert await redis.ttl(KEYS.status_stream("short-chunks")) > 3000
        assert await redis.ttl(KEYS.state("short-chunks")) > 3000

        async def chunks_gone() -> bool:
            return not await redis.exists(KEYS.job("short-chunks"))

        await wait_until(chunks_gone, within=30, what="job stream expiry")
        expected = gen.expected(req)
        # the client follows the status, reads the blob (the chunks are gone) and verifies it
        async with TraceClient(redis_server.url, prefix="t", file_root=tmp_path / "blobs") as client:
            out = tmp_path / "out.pftrace"
            status = await client.job("short-chunks").download(out, timeout=60)
            assert status.state == JobState.SUCCEEDED
            assert out.read_bytes() == expected
            assert hashlib.sha256(expected).hexdigest() == status.sha256
        # without the blob folder the error says what to set (the command line's setting too)
        async with TraceClient(redis_server.url, prefix="t") as client:
            with pytest.raises(TraceIntegrityError, match=r"TRACE_WORKER_BLOB_URL=file://<that folder>"):
                await client.job("short-chunks").download(tmp_path / "no-root.pftrace", timeout=60)

        # a duplicate request is answered (not rerun) with where the blob is
        await submit(redis, KEYS, req)
        answer = await JobReader(redis, KEYS, "short-chunks").terminal()
        assert answer.state == JobState.SUCCEEDED and answer.sha256 == final.sha256
        assert answer.detail is not None and "duplicate" in answer.detail
        assert answer.uri == final.uri
        assert gen.calls == 1  # nothing computed again
        # the answer recreated the job stream: it expires again, the status keeps its lifetime
        assert 0 < await redis.pttl(KEYS.job("short-chunks")) <= 1000
        assert await redis.ttl(KEYS.status_stream("short-chunks")) > 3000
        entries: Any = await redis.xrange(KEYS.job("short-chunks"))
        assert entries and {f[b"type"] for _, f in entries} == {b"status"}  # answers only, no chunk
    finally:
        await service.stop()
