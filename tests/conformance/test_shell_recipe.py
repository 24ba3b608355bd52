"""docs/PROTOCOL.md §6: scripts/redis-cli-trace.sh (POSIX sh + redis-cli) against a real worker process,
the devserver and a real redis-server: the trace it writes is the blob, byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from tests.support.worker_process import ROOT, Spawn, worker_env
from worker.devserver import DevServer

SCRIPT = ROOT / "scripts" / "redis-cli-trace.sh"


async def run_recipe(redis_server: RedisServer, *args: str, cwd: Path) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "REDIS": f"redis-cli -h 127.0.0.1 -p {redis_server.port}",
        "PREFIX": "t",
        "TIMEOUT": os.environ.get("RECIPE_TIMEOUT", "240"),
    }
    proc = await asyncio.create_subprocess_exec(
        "sh", *(["-x"] if os.environ.get("RECIPE_TRACE") else []), str(SCRIPT), *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
async def test_shell_recipe_requests_and_verifies_a_trace(
    redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    # the recipe reads one entry per redis-cli call: default chunk size and progress rate
    env = worker_env(
        redis_server.url, devserver.url, blobs.as_uri(),
        TRACE_WORKER_CHUNK_SIZE="1044480", TRACE_WORKER_PROGRESS_INTERVAL_S="0.25",
    )  # fmt: skip
    spawn_worker(env)
    pid = devserver.lake.processes[0].process_id
    request = json.dumps({"process_id": pid, "job_id": "sh-1"}, separators=(",", ":"))
    code, out, err = await run_recipe(redis_server, "sh-1", request, "sh.pftrace", cwd=tmp_path)
    assert code == 0, out + err
    assert "sh.pftrace verified" in out
    data = (tmp_path / "sh.pftrace").read_bytes()
    assert data == (blobs / pid / "sh-1.pftrace").read_bytes() and len(data) > 100_000
    assert f"sha256 {hashlib.sha256(data).hexdigest()}" in out

    # a duplicate's answer points back at the same attempt's chunks (start_id)
    code, out, err = await run_recipe(redis_server, "sh-1", request, "again.pftrace", cwd=tmp_path)
    assert code == 0, out + err
    assert (tmp_path / "again.pftrace").read_bytes() == data

    # a failure is reported with its code, and no file is left behind
    bad = json.dumps({"process_id": "00000000-0000-4000-8000-000000000000", "job_id": "sh-2"})
    code, out, err = await run_recipe(redis_server, "sh-2", bad, "none.pftrace", cwd=tmp_path)
    assert code == 1 and "process_not_found" in err
    assert not (tmp_path / "none.pftrace").exists()
