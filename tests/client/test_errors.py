"""One error family (issue 20 item 7): every failure of a client call is a ClientError (bad input,
bad job id, Redis down, timeouts), and the blocking client leaves no asyncio warnings behind when
an events() loop is left early or wait() is interrupted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from contracts import JobState, Keys, TraceRequest, client_errors
from contracts.client import (
    ClientError,
    ConnectionLost,
    InvalidJobId,
    InvalidRequest,
    JobFailed,
    JobNotFound,
    TraceClient,
    TraceIntegrityError,
    WaitTimeout,
)
from contracts.sync_client import SyncTraceClient
from tests.client.scripted import PID, ScriptedWorker
from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_every_client_error_derives_from_client_error() -> None:
    for name in client_errors.__all__:
        assert issubclass(getattr(client_errors, name), ClientError), name
    assert {ConnectionLost, InvalidJobId, InvalidRequest, JobFailed, JobNotFound, TraceIntegrityError} <= {
        getattr(client_errors, n) for n in client_errors.__all__
    }
    assert issubclass(InvalidRequest, ValueError) and issubclass(WaitTimeout, TimeoutError)


@pytest.mark.parametrize("job_id", ["bad id!", "", "x" * 129, "a/b", "{j}"])
async def test_a_bad_job_id_is_refused(client: TraceClient, job_id: str) -> None:
    with pytest.raises(InvalidJobId, match="bad job id"):
        client.job(job_id)


async def test_an_invalid_request_is_a_client_error(client: TraceClient) -> None:
    with pytest.raises(InvalidRequest, match="process_id"):
        await client.submit({"process_id": "not-a-uuid"})
    with pytest.raises(InvalidRequest, match="begin"):
        await client.submit({"process_id": PID, "begin": "2026-11-26T10:00:00"})  # no offset
    job = await client.submit({"process_id": PID, "job_id": "as-dict"})  # a mapping is validated
    assert job.job_id == "as-dict" and job.request == TraceRequest(process_id=PID, job_id="as-dict")


async def test_redis_down_is_connection_lost_for_every_call() -> None:
    async with TraceClient(f"redis://127.0.0.1:{free_port()}/0", "t", reconnect_timeout_s=1) as client:
        job = client.job("any")
        calls = [
            client.ping(),
            client.submit(TraceRequest(process_id=PID)),
            client.recent_jobs(),
            job.state(),
            job.health(),
            job.cancel(),
            job.wait(30),
        ]
        for call in calls:
            with pytest.raises(ConnectionLost, match="cannot reach Redis"):
                await call
    with pytest.raises(InvalidRequest, match="Redis URL"):
        TraceClient("http://127.0.0.1:1/0")


SCRIPT = """
import gc, signal, sys
from contracts import JobState
from contracts.sync_client import SyncTraceClient

url = sys.argv[1]

def interrupt(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, interrupt)
client = SyncTraceClient(url, "t")
for event in client.job("done").events():  # left early
    break
kept = client.job("done").events()  # left early, still referenced when the client closes
next(kept)
signal.setitimer(signal.ITIMER_REAL, 0.5)
try:
    client.job("never-ends").wait()  # interrupted (Ctrl-C)
except KeyboardInterrupt:
    print("interrupted")
signal.setitimer(signal.ITIMER_REAL, 0.5)
try:
    for event in client.job("never-ends").events():  # interrupted while blocked in the loop
        pass
except KeyboardInterrupt:
    print("interrupted")
print(client.job("done").wait(30).state.value)  # the client still works after an interrupt
client.close()
del kept
gc.collect()
print("closed")
"""


def test_the_blocking_client_leaves_no_asyncio_warnings(redis_server: RedisServer, tmp_path: Path) -> None:
    async def script() -> None:
        redis = aioredis.Redis.from_url(redis_server.url)
        try:
            worker = ScriptedWorker(redis, Keys("t"))
            await worker.whole_job("done", b"\n\x00" * 100)
            await worker.status("never-ends", JobState.RUNNING, 1)
        finally:
            await redis.aclose()

    asyncio.run(script())
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(SCRIPT), redis_server.url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert out.stdout.split() == ["interrupted", "interrupted", "succeeded", "closed"], out.stderr
    for warning in ("Task was destroyed", "Event loop is closed", "Exception ignored", "never awaited"):
        assert warning not in out.stderr, out.stderr
    assert out.returncode == 0, out.stderr


def test_a_closed_blocking_client_says_so(redis_server: RedisServer) -> None:
    client = SyncTraceClient(redis_server.url, "t")
    client.close()
    client.close()  # idempotent
    with pytest.raises(ClientError, match="closed"):
        client.ping()
