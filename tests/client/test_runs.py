"""Runs of one job id and what a client can tell about them (issue 20 items 3 and 6): the latest
run everywhere after a resubmission (also from a new process), unknown vs queued, times on
progress, the answer to a duplicate request, a silent worker, timeouts on events()."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts import JobState, ProgressEvent, StatusEvent, TraceRequest
from contracts.client import JobHealth, JobNotFound, TraceClient, WaitTimeout
from contracts.keys import Keys
from tests.client.helpers import blob_path, file_sha256
from tests.client.scripted import PID, ScriptedWorker
from tests.support.chaos import ChaosProxy
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer

ROOT = Path(__file__).resolve().parents[2]


async def _until_running(events: object) -> None:
    async for event in events:  # type: ignore[attr-defined]
        if isinstance(event, ProgressEvent):
            return


async def test_a_resubmitted_job_reads_as_its_latest_run_everywhere(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    with ChaosProxy(("127.0.0.1", devserver.port)) as proxy:
        # The first run's Flight SQL answers stall: the cancel always wins, however busy the machine.
        proxy.set_mode("stall")
        spawn_worker(worker_env(redis_server.url, f"grpc://127.0.0.1:{proxy.port}", blobs.as_uri()))
        large, small = (p.process_id for p in devserver.lake.processes)
        first = await client.submit(TraceRequest(process_id=large, job_id="again"))
        async for event in first.events(timeout=120):  # the attempt started (and stalls on its query)
            if isinstance(event, StatusEvent) and event.state == JobState.RUNNING:
                break
        await first.cancel()
        cancelled = await first.wait(120)
        assert (cancelled.state, cancelled.attempt) == (JobState.CANCELLED, 1)
        proxy.set_mode("pass")
        request = TraceRequest(process_id=small, job_id="again")
        second = await client.submit(request)
        done = await second.download(tmp_path / "second.pftrace", timeout=120)
    assert (done.state, done.attempt) == (JobState.SUCCEEDED, 2)

    async with TraceClient(redis_server.url, "t") as fresh:  # a new client knows nothing of the above
        job = fresh.job("again")
        waited, state = await job.wait(60), await job.state()
        downloaded = await job.download(tmp_path / "fresh.pftrace", timeout=60)
        events = [e async for e in fresh.job("again").events(timeout=60)]
    for status in (waited, state, downloaded):
        assert status is not None and (status.state, status.attempt, status.sha256) == (
            JobState.SUCCEEDED,
            2,
            done.sha256,
        )
    assert file_sha256(tmp_path / "fresh.pftrace") == file_sha256(blob_path(blobs, request)) == done.sha256
    assert {e.attempt for e in events} == {2} and events[-1] == waited

    # And from another process, through the blocking client.
    script = textwrap.dedent(f"""
        import json
        from contracts.sync_client import SyncTraceClient
        with SyncTraceClient({redis_server.url!r}, "t") as c:
            job = c.job("again")
            w, s = job.wait(60), job.state()
            d = job.download({str(tmp_path / "proc.pftrace")!r}, timeout=60)
            print(json.dumps([[x.state.value, x.attempt, x.sha256] for x in (w, s, d)]))
    """)
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert json.loads(out.stdout) == [["succeeded", 2, done.sha256]] * 3


async def test_unknown_and_queued_jobs_are_told_apart(client: TraceClient, worker: ScriptedWorker) -> None:
    never = client.job("never-submitted")
    assert await never.state() is None
    with pytest.raises(JobNotFound):
        await never.wait(30)
    with pytest.raises(JobNotFound):
        await anext(never.events())
    with pytest.raises(JobNotFound):
        await never.download(io.BytesIO())

    # Submitted, no worker yet: queued (with the time of the request), and waiting times out.
    job = await client.submit(TraceRequest(process_id=PID, job_id="waiting"))
    other = client.job("waiting")
    state = await other.state()
    assert state is not None and state.state == JobState.QUEUED and state.attempt == 0
    assert abs(state.time.timestamp() - time.time()) < 300
    with pytest.raises(WaitTimeout) as timed_out:
        await other.wait(0.2)
    assert isinstance(timed_out.value, TimeoutError)
    with pytest.raises(WaitTimeout):
        async for _ in job.events(idle_timeout=0.2):
            pass

    # An ended job resubmitted: queued again until a worker starts the new run, whose end is the
    # answer for every handle (the old run's cancelled status is history).
    await worker.status("waiting", JobState.RUNNING, 1)
    await worker.status("waiting", JobState.CANCELLED, 1)
    assert (await other.state()).state == JobState.CANCELLED  # type: ignore[union-attr]
    again = await client.submit(TraceRequest(process_id=PID, job_id="waiting"))
    assert (await client.job("waiting").state()).state == JobState.QUEUED  # type: ignore[union-attr]
    pending = asyncio.create_task(client.job("waiting").wait(30))
    mine = asyncio.create_task(again.wait(30))
    data = b"\n\x00" * 10
    await worker.status("waiting", JobState.RUNNING, 2)
    await worker.chunks("waiting", data, 2)
    await worker.succeed("waiting", data, 2)
    for status in await asyncio.gather(pending, mine):
        assert (status.state, status.attempt) == (JobState.SUCCEEDED, 2)
    assert (await client.job("waiting").state()).attempt == 2  # type: ignore[union-attr]


async def test_times_on_progress_and_the_answer_to_a_duplicate_request(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "b").as_uri()))
    request = TraceRequest(
        process_id=devserver.lake.processes[0].process_id, labels={"requested_by": "alice"}
    )
    job = await client.submit(request)
    events = [e async for e in job.events(timeout=120)]
    running = next(e for e in events if isinstance(e, StatusEvent) and e.state == JobState.RUNNING)
    final = events[-1]
    assert isinstance(final, StatusEvent) and final.state == JobState.SUCCEEDED
    assert isinstance(running, StatusEvent) and running.lease_s == 2 and running.heartbeat_s == 0.5
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert progress and all(p.time is not None for p in progress)
    times = [running.time, *(p.time for p in progress), final.time]
    assert times == sorted(times)  # type: ignore[type-var]

    # The same request again: no new run; its events are the worker's answer, not a replay.
    dup = await client.submit(request.model_copy(update={"labels": {"requested_by": "bob"}}))
    answer = [e async for e in dup.events(timeout=60)]
    assert [e.state for e in answer if isinstance(e, StatusEvent)] == [JobState.QUEUED, JobState.SUCCEEDED]
    reply = answer[-1]  # the pickup acknowledgement, then the answer: both name this request
    assert isinstance(reply, StatusEvent) and reply.state == JobState.SUCCEEDED
    assert reply.detail is not None and reply.detail.startswith("duplicate request")
    assert reply.time > final.time and reply.sha256 == final.sha256
    assert await dup.wait(30) == reply
    # Its trace is the original run's.
    assert (await dup.download(tmp_path / "dup.pftrace", timeout=60)).sha256 == final.sha256


async def test_a_silent_worker_shows_as_stale(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    worker = spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "b").as_uri()))
    job = await client.submit(
        TraceRequest(process_id=devserver.lake.processes[1].process_id, job_id="silent")
    )
    await _until_running(job.events(timeout=120))
    alive = await job.health()
    assert alive.status is not None and alive.status.state == JobState.RUNNING
    assert alive.holder is not None and alive.holder.endswith("/1")
    worker.kill()  # SIGKILL: no status, the lease stops being renewed
    worker.wait(30)
    deadline = time.monotonic() + 60
    health: JobHealth = alive
    while not health.stale and time.monotonic() < deadline:
        await asyncio.sleep(0.2)  # polling a condition, with a deadline
        health = await job.health()
    assert health.stale
    assert health.holder is None or (health.silent_s or 0) > 1.5
    with pytest.raises(WaitTimeout):  # the history, then nothing for 1 s
        async for _ in client.job("silent").events(idle_timeout=1.0):
            pass


async def test_another_requests_refusal_does_not_end_a_finished_job_for_its_followers(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """Any requester can make the worker write an attempt-0 `failed` answer on a job's stream (an
    invalid request naming the job). A handle on the job must still see the job's own run."""
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "blobs").as_uri()))
    small = devserver.lake.processes[1].process_id
    done = await (await client.submit(TraceRequest(process_id=small, job_id="victim"))).wait(120)
    assert done.state is JobState.SUCCEEDED
    keys = Keys("t")
    redis: Any
    async with aioredis.Redis.from_url(redis_server.url) as redis:
        last = (await redis.xrevrange(keys.status_stream("victim"), count=1))[0][0]
        mallory = await redis.xadd(
            keys.requests, {"request": json.dumps({"process_id": "nope", "job_id": "victim"})}
        )
        refusal: dict[Any, Any] = {}
        while refusal.get(b"request_id") != mallory:  # each XREAD blocks until the worker writes
            reply = await redis.xread({keys.status_stream("victim"): last}, block=60_000, count=1)
            assert reply, "the worker never answered the invalid request"
            last, refusal = reply[0][1][0]
    assert (refusal[b"state"], refusal[b"attempt"], refusal[b"error_code"]) == (
        b"failed",
        b"0",
        b"invalid_request",
    )

    async with TraceClient(redis_server.url, "t", file_root=tmp_path) as fresh:
        job = fresh.job("victim")
        waited = await job.wait(30)
        downloaded = await job.download(io.BytesIO(), timeout=30)
    for status in (waited, downloaded):
        assert (status.state, status.attempt, status.sha256) == (JobState.SUCCEEDED, 1, done.sha256)


async def test_a_cancel_of_a_job_that_never_existed_leaves_it_unknown(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """The worker answers such a cancel `not_found` on the job's streams; that answer alone must not
    make the job known (wait() would then hang instead of raising JobNotFound)."""
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "blobs").as_uri()))
    keys = Keys("t")
    redis: Any
    async with aioredis.Redis.from_url(redis_server.url) as redis:
        await redis.xadd(keys.cancels, {"job_id": "ghost"})
        reply = await redis.xread({keys.status_stream("ghost"): "0"}, block=60_000, count=1)
        assert reply, "the worker never answered the cancel"
        answer = reply[0][1][0][1]
    assert (answer[b"type"], answer[b"outcome"]) == (b"cancel", b"not_found")
    assert await client.job("ghost").state() is None
    with pytest.raises(JobNotFound):
        await client.job("ghost").wait(30)
