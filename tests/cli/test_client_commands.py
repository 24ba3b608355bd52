"""`request`, `status`, `cancel`, `jobs` through the real entry point (``python -m worker``).

The job side is the scripted contract writer (tests/client/scripted.py), so each outcome can be
produced on demand; tests/cli/test_demo.py and tests/client/test_against_worker.py use the real worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts import JobState, Keys, TraceRequest
from contracts.events import CancelEvent, CancelOutcome
from tests.client.scripted import PID, ScriptedWorker
from tests.support.processes import track
from tests.support.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_env(redis_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")}
    env["PYTHONPATH"] = str(ROOT)
    if redis_url is not None:
        env["TRACE_WORKER_REDIS_URL"] = redis_url
    env["TRACE_WORKER_KEY_PREFIX"] = "t"
    return env


#: Generous waits: the machine may be busy.
WAIT_S = 120.0


async def start_cli(*args: str, cwd: Path, redis_url: str | None) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        cwd=cwd,
        env=cli_env(redis_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return track(proc)  # stopped and reaped when the test ends (tests/cli/conftest.py)


async def finish(proc: asyncio.subprocess.Process) -> Result:
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def cli(*args: str, cwd: Path, redis_url: str | None) -> Result:
    return await finish(await start_cli(*args, cwd=cwd, redis_url=redis_url))


async def next_request(redis: aioredis.Redis, last: str = "0") -> tuple[str, TraceRequest]:
    """Wait (XREAD BLOCK) for the next request entry the CLI submits."""
    reply: Any = None
    async with asyncio.timeout(WAIT_S):
        while not reply:  # blocks of 2 s: under redis-py's default 5 s socket timeout
            reply = await redis.xread({"t:requests": last}, count=1, block=2000)
    entries = reply[b"t:requests"][0] if isinstance(reply, dict) else reply[0][1]
    entry_id, fields = entries[0]
    return entry_id.decode(), TraceRequest.from_json(fields[b"request"])


@pytest.fixture
async def scripted(redis_server: RedisServer) -> AsyncIterator[ScriptedWorker]:
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        yield ScriptedWorker(redis, Keys("t"))
    finally:
        await redis.aclose()


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err


async def test_request_shows_progress_and_writes_the_file(
    redis_server: RedisServer, scripted: ScriptedWorker, tmp_path: Path
) -> None:
    proc = await start_cli(
        "request", PID, "--begin", "2026-11-26T10:00:00Z", "--end", "2026-11-26T12:00:00+01:00",
        "--span-types", "thread", "--job-id", "cli-1", "--label", "requested_by=test", "-o", "out.pftrace",
        cwd=tmp_path, redis_url=redis_server.url,
    )  # fmt: skip
    _, request = await next_request(scripted.redis)
    assert (request.job_id, request.span_types.value, request.labels) == (
        "cli-1",
        "thread",
        {"requested_by": "test"},
    )
    assert request.begin is not None and request.begin.isoformat() == "2026-11-26T10:00:00+00:00"
    data = random.Random(1).randbytes(250_000)
    await scripted.whole_job("cli-1", data, chunk_size=64_000)
    result = await finish(proc)
    assert result.code == 0, result.err
    assert (tmp_path / "out.pftrace").read_bytes() == data
    path = (tmp_path / "out.pftrace").resolve()
    assert f"file    {path}" in result.out
    assert "job     cli-1" in result.out
    assert f"({len(data):,} bytes)" in result.out
    assert "ui.perfetto.dev" in result.out
    # Progress on stderr (not a terminal: one line per status, progress lines with percent/spans/elapsed).
    assert "running   attempt 1" in result.err
    assert "50.0%" in result.err and "spans" in result.err and "00:0" in result.err
    assert "succeeded" in result.err


async def test_request_default_output_is_named_after_the_job(
    redis_server: RedisServer, scripted: ScriptedWorker, tmp_path: Path
) -> None:
    proc = await start_cli("request", PID, "--quiet", cwd=tmp_path, redis_url=redis_server.url)
    _, request = await next_request(scripted.redis)
    job_id = request.effective_job_id()
    await scripted.whole_job(job_id, b"abc")
    result = await finish(proc)
    assert result.code == 0, result.err
    assert (tmp_path / f"{job_id}.pftrace").read_bytes() == b"abc"
    assert result.err.strip() == f"job {job_id}"  # --quiet: no progress lines


@pytest.mark.parametrize(
    ("state", "code", "expected"),
    [
        (JobState.FAILED, 1, "job cli-f failed: process_not_found: no such process"),
        (JobState.CANCELLED, 3, "job cli-f cancelled"),
        (JobState.DEAD, 4, "job cli-f dead: too_many_deliveries: gave up"),
    ],
)
async def test_request_exit_status_says_how_the_job_ended(  # noqa: PLR0917 - fixtures + parameters
    redis_server: RedisServer,
    scripted: ScriptedWorker,
    tmp_path: Path,
    state: JobState,
    code: int,
    expected: str,
) -> None:
    proc = await start_cli(
        "request",
        PID,
        "--job-id",
        "cli-f",
        "-o",
        "x.pftrace",
        "--quiet",
        cwd=tmp_path,
        redis_url=redis_server.url,
    )
    await next_request(scripted.redis)
    extra: dict[str, object] = {}
    if state == JobState.FAILED:
        extra = {"error_code": "process_not_found", "message": "no such process", "retryable": False}
    elif state == JobState.DEAD:
        extra = {"error_code": "too_many_deliveries", "message": "gave up", "retryable": True}
    await scripted.status("cli-f", JobState.RUNNING, 1)
    await scripted.status("cli-f", state, 1, **extra)
    result = await finish(proc)
    assert result.code == code
    assert expected in result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "x.pftrace").exists() and not (tmp_path / "x.pftrace.part").exists()


async def test_request_blob_only_fetches_the_object(
    redis_server: RedisServer, scripted: ScriptedWorker, tmp_path: Path
) -> None:
    data = random.Random(2).randbytes(100_000)
    blob = tmp_path / "traces" / "store.pftrace"  # under the settings' local blob folder
    blob.parent.mkdir()
    blob.write_bytes(data)
    proc = await start_cli(
        "request",
        PID,
        "--blob-only",
        "--job-id",
        "cli-b",
        "-o",
        "b.pftrace",
        cwd=tmp_path,
        redis_url=redis_server.url,
    )
    _, request = await next_request(scripted.redis)
    assert request.chunks is False
    await scripted.status("cli-b", JobState.RUNNING, 1)
    await scripted.succeed("cli-b", data, 1, uri=blob.as_uri(), url=blob.as_uri(), chunks=0)
    result = await finish(proc)
    assert result.code == 0, result.err
    assert (
        hashlib.sha256((tmp_path / "b.pftrace").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    )


async def test_request_no_wait_prints_the_job_id(redis_server: RedisServer, tmp_path: Path) -> None:
    result = await cli(
        "request", PID, "--job-id", "nw", "--no-wait", cwd=tmp_path, redis_url=redis_server.url
    )
    assert (result.code, result.out.strip()) == (0, "nw")
    redis = aioredis.Redis.from_url(redis_server.url)
    assert await redis.xlen("t:requests") == 1
    await redis.aclose()


async def test_request_timeout(redis_server: RedisServer, tmp_path: Path) -> None:
    result = await cli(
        "request",
        PID,
        "--job-id",
        "slow",
        "--timeout",
        "0.5",
        "--quiet",
        cwd=tmp_path,
        redis_url=redis_server.url,
    )
    assert result.code == 5
    assert "gave up waiting after 0.5 s; the job goes on (trace-worker status slow)" in result.err


async def test_status(redis_server: RedisServer, scripted: ScriptedWorker, tmp_path: Path) -> None:
    await scripted.succeed("st-1", b"12345", 2, uri="file:///x/st-1.pftrace", spans=7, labels={"by": "me"})
    result = await cli("status", "st-1", cwd=tmp_path, redis_url=redis_server.url)
    assert result.code == 0, result.err
    lines = dict(line.split(None, 1) for line in result.out.splitlines() if " " in line)
    assert (
        lines["state"] == "succeeded" and lines["attempt"] == "2" and lines["uri"] == "file:///x/st-1.pftrace"
    )
    as_json = await cli("status", "st-1", "--json", cwd=tmp_path, redis_url=redis_server.url)
    assert '"state": "succeeded"' in as_json.out
    unknown = await cli("status", "nope", cwd=tmp_path, redis_url=redis_server.url)
    assert unknown.code == 1 and "unknown job nope" in unknown.err
    no_traceback(unknown)


async def test_cancel(redis_server: RedisServer, scripted: ScriptedWorker, tmp_path: Path) -> None:
    await scripted.status("cx", JobState.RUNNING, 1)
    proc = await start_cli("cancel", "cx", "--wait", "30", cwd=tmp_path, redis_url=redis_server.url)
    assert proc.stdout is not None
    # the scripted worker answers the cancel entry as a worker does (PROTOCOL §5)
    got: Any = None
    for _ in range(60):  # the command starts slowly on a busy machine
        got = await scripted.redis.xread({"t:cancels": "0"}, block=2000)
        if got:
            break
    cancel_id, fields = got[0][1][0]
    assert fields == {b"job_id": b"cx"}  # a job-level cancel: every request of the job
    ack = CancelEvent(
        job_id="cx", cancel_id=cancel_id.decode(), outcome=CancelOutcome.CANCELLED, detail="stops"
    )
    ack_fields: Any = ack.to_fields()
    await scripted.redis.xadd("t:job:{cx}", ack_fields)
    first = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
    assert first.decode().strip() == "cancel cancelled for cx (stops)"
    await scripted.status("cx", JobState.CANCELLED, 1)
    result = await finish(proc)
    assert result.code == 0, result.err
    assert "job cx ended cancelled" in result.out
    again = await cli("cancel", "cx", cwd=tmp_path, redis_url=redis_server.url)
    assert again.code == 1 and "already ended cancelled" in again.err
    no_traceback(again)


async def test_cancel_wait_bounds_the_wait_for_an_answer(
    redis_server: RedisServer, scripted: ScriptedWorker, tmp_path: Path
) -> None:
    # The job runs but no worker reads the cancels stream: --wait 1 is the whole budget.
    await scripted.status("cw", JobState.RUNNING, 1)
    result = await cli("cancel", "cw", "--wait", "1", cwd=tmp_path, redis_url=redis_server.url)
    assert result.code == 5, result.err
    assert "no worker answered within 1 s" in result.err
    no_traceback(result)


async def test_jobs(redis_server: RedisServer, scripted: ScriptedWorker, tmp_path: Path) -> None:
    empty = await cli("jobs", cwd=tmp_path, redis_url=redis_server.url)
    assert (empty.code, empty.out.strip()) == (0, "no jobs yet")
    await scripted.status("a-job", JobState.RUNNING, 1)
    await scripted.status("b-job", JobState.FAILED, 1, error_code="empty_range", message="no spans")
    await scripted.succeed("a-job", b"x" * 2048, 1)
    result = await cli("jobs", "-n", "5", cwd=tmp_path, redis_url=redis_server.url)
    rows = result.out.splitlines()
    assert rows[0].startswith("JOB")
    assert rows[1].split()[:2] == ["a-job", "succeeded"] and "2.0 KiB" in rows[1]
    assert rows[2].split()[:2] == ["b-job", "failed"] and "empty_range: no spans" in rows[2]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["request", "not-a-uuid"], 2, "process_id must be a UUID"),
        (["request", PID, "--begin", "yesterday"], 2, "not an RFC 3339 time"),
        (["request", PID, "--begin", "2026-11-26T10:00:00"], 2, "times need an offset"),
        (
            ["request", PID, "--begin", "2026-11-26T11:00:00Z", "--end", "2026-11-26T10:00:00Z"],
            2,
            "begin must be before end",
        ),
        (["request", PID, "--job-id", "bad id!"], 2, "job_id"),
        (["request", PID, "--label", "novalue"], 2, "labels are KEY=VALUE"),
        (["request", PID, "-o", "missing/dir/x.pftrace"], 2, "no such directory"),
        (["request", PID, "--redis-url", "http://127.0.0.1:1/"], 2, "not a Redis URL"),
        (["status", "j", "--redis-url", "localhost:6379"], 2, "not a Redis URL"),
        # the setting's own check: redis-py would pass `PASSWORD` to its connections and fail there
        (
            ["jobs", "--redis-url", "redis://127.0.0.1:1/0?PASSWORD=hunter2-secret"],
            2,
            "bad --redis-url: unknown query argument 'PASSWORD' (redis-py reads e.g. db, password",
        ),
        (["jobs", "--redis-url", "redis://127.0.0.1:1/0?db=x"], 2, "bad --redis-url: "),
    ],
)
async def test_user_errors_are_one_line(
    redis_server: RedisServer, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = await cli(*args, cwd=tmp_path, redis_url=redis_server.url)
    assert result.code == code, result.err
    assert message in result.err
    assert "hunter2" not in result.err + result.out
    no_traceback(result)


@pytest.mark.parametrize("command", [["request", PID], ["status", "j"], ["cancel", "j"], ["jobs"]])
async def test_redis_unreachable(tmp_path: Path, command: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = await cli(*command, cwd=tmp_path, redis_url=url)
    assert result.code == 1
    assert "127.0.0.1" in result.err and ("cannot reach Redis" in result.err or "Redis failed" in result.err)
    no_traceback(result)


async def test_request_says_when_no_worker_consumes_the_prefix(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    args = ("request", PID, "--job-id", "lonely", "--timeout", "8", "--quiet")
    result = await cli(*args, cwd=tmp_path, redis_url=redis_server.url)
    assert result.code == 5
    assert "not picked up after 5 s: no worker has ever consumed prefix 't'" in result.err
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        await redis.xgroup_create("t:requests", "t:workers", id="0", mkstream=True)
        result = await cli(*args, cwd=tmp_path, redis_url=redis_server.url)
    finally:
        await redis.aclose()
    assert result.code == 5
    assert "no worker is consuming prefix 't' (0 consumer(s) of t:workers" in result.err


async def test_request_says_how_many_wait_when_workers_are_busy(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An active consumer that picks nothing up (busy): the count is of requests not delivered,
    the command's own included."""
    args = ("request", PID, "--job-id", "busy", "--timeout", "8", "--quiet")
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        await redis.xgroup_create("t:requests", "t:workers", id="$", mkstream=True)
        await redis.xgroup_createconsumer("t:requests", "t:workers", "busy-worker")  # idle 0: active
        result = await cli(*args, cwd=tmp_path, redis_url=redis_server.url)
    finally:
        await redis.aclose()
    assert result.code == 5
    assert "1 worker(s) on prefix 't' are busy; 1 request(s) not picked up yet, yours included" in result.err
