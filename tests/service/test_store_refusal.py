"""A blob store that refuses writes (issue 10 item 5): /readyz says so, a job fails at once, before
its trace is computed (no retries computing it again), and the chunks of attempts that did not
succeed are removed.

Tests run as root, so ``chmod`` cannot make a folder unwritable: the folder is made immutable
(``chattr +i``: EPERM even for root, while ``os.access`` still says writable), or, on a file system
without that attribute, replaced by a regular file (ENOTDIR). S3: a bucket that does not exist.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, Keys, TraceRequest
from tests.service.support import PID, JobReader, ScriptedGenerator, fast_settings, submit
from tests.service.test_http import _get
from tests.support.redis_server import RedisServer
from tests.support.s3 import MotoS3
from worker.errors import BlobStoreRefused
from worker.service.app import Service
from worker.sinks.blob.base import BlobStore
from worker.sinks.blob.local import LocalBlobStore
from worker.sinks.blob.s3 import S3BlobStore

KEYS = Keys("t")


@contextmanager
def refusing(folder: Path) -> Iterator[str]:
    """Make ``folder`` refuse new files for the block; yields how."""
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if done.returncode == 0:
        try:
            yield "immutable"
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    shutil.rmtree(folder)
    folder.write_bytes(b"not a folder")
    try:
        yield "file"
    finally:
        folder.unlink()
        folder.mkdir()


async def _started(url: str, store: BlobStore, gen: ScriptedGenerator) -> Service:
    service = Service(fast_settings(url, retry_max=3), generator=gen, store=store)
    await service.start()
    assert service.http is not None
    service.http.readiness.ttl_s = 0.0
    return service


async def _fails_at_once(redis: Redis, gen: ScriptedGenerator, job_id: str) -> None:
    req = TraceRequest(process_id=PID, job_id=job_id)
    calls = gen.calls
    await submit(redis, KEYS, req)
    final = await JobReader(redis, KEYS, job_id).terminal()
    assert gen.calls == calls  # the store was checked before the trace was computed
    assert final.state == JobState.FAILED and final.error_code == ErrorCode.BLOB_STORE_ERROR, final
    assert final.retryable is True, final  # resubmitting succeeds once the store is fixed
    assert final.attempt == 1, final  # one attempt: a refused write is not retried
    statuses: Any = await redis.xrange(KEYS.status_stream(job_id))
    states = [f[b"state"] for _, f in statuses if f[b"type"] == b"status"]
    assert states.count(b"running") == 1 and states[-1] == b"failed", states  # no second attempt
    # no chunk of the failed attempt is left behind in Redis
    entries: Any = await redis.xrange(KEYS.job(job_id))
    assert not [f for _, f in entries if f[b"type"] == b"chunk"]


async def test_local_folder_refusing_writes(redis_server: RedisServer, redis: Redis, tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = LocalBlobStore(root)
    gen = ScriptedGenerator(chunks=3)
    service = await _started(redis_server.url, store, gen)
    try:
        assert service.http is not None
        port = service.http.port
        status, body = await _get(port, "/readyz")
        assert status == 200, body
        assert list(root.iterdir()) == []  # the probe deletes what it writes
        with refusing(root):
            status, body = await _get(port, "/readyz")
            assert status == 503, body
            assert "blob" in json.loads(body)["failures"], body
            with pytest.raises(BlobStoreRefused):
                await store.ping()
            await _fails_at_once(redis, gen, "refused-local")
        status, _ = await _get(port, "/readyz")
        assert status == 200
    finally:
        await service.stop()


async def test_s3_missing_bucket(redis_server: RedisServer, redis: Redis, moto_s3: MotoS3) -> None:
    store = S3BlobStore("s3://no-such-bucket-here/p", **moto_s3.options())
    gen = ScriptedGenerator(chunks=3)
    service = await _started(redis_server.url, store, gen)
    try:
        assert service.http is not None
        status, body = await _get(service.http.port, "/readyz")
        assert status == 503 and "does not exist" in json.loads(body)["failures"]["blob"], body
        await _fails_at_once(redis, gen, "refused-s3")
    finally:
        await service.stop()
