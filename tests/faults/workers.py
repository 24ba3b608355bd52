"""Helpers for fault tests on worker processes: a spawner with a file-size limit (a full disk as the
worker sees it), job outcome readers, and the checks every fault test ends with."""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from contracts import JobState, Keys, StatusEvent, TraceRequest
from tests.service.support import JobReader, submit
from tests.support.chaos import blob_leftovers
from tests.support.worker_process import stop_process
from worker.service.job import blob_key

__all__ = ["KEYS", "full_disk_worker", "run_job", "succeeded_bytes"]

KEYS = Keys("t")


@contextmanager
def full_disk_worker(
    env: dict[str, str], log: Path, max_file_bytes: int
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process that cannot grow any file past ``max_file_bytes`` (RLIMIT_FSIZE): writes
    beyond fail with EFBIG, as on a full disk, without mounting anything. Python ignores SIGXFSZ,
    so the process is not killed, it sees the error."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--consumer", "full-disk"],
            cwd=log.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=limit,  # noqa: PLW1509 - the limit must be set in the child before exec
        )
    try:
        yield proc
    finally:
        stop_process(proc)


async def run_job(
    redis: Redis, request: TraceRequest, within: float = 60.0, keys: Keys = KEYS
) -> tuple[StatusEvent, JobReader]:
    """Submit ``request`` and wait for its terminal status (XREAD BLOCK on the job stream). The
    reader starts after the stream's current end, so a resubmission sees only its own entries."""
    reader = JobReader(redis, keys, request.effective_job_id())
    tail: Any = await redis.xrevrange(reader.stream, count=1)
    if tail:
        reader.last = tail[0][0].decode()
    await submit(redis, keys, request)
    return await reader.terminal(within=within), reader


def succeeded_bytes(final: StatusEvent, reader: JobReader, blobs: Path, request: TraceRequest) -> bytes:
    """Check a succeeded job (one terminal status, chunks == blob == sha256); return its trace."""
    assert final.state == JobState.SUCCEEDED, (final.error_code, final.message)
    assert len([s for s in reader.statuses() if s.state.terminal]) == 1
    blob = (blobs / blob_key(request, request.effective_job_id())).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == final.sha256
    if request.chunks:
        assert reader.trace_bytes(final.attempt) == blob
    assert not list(blob_leftovers(blobs / request.process_id))
    return blob
