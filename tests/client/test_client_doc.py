"""docs/CLIENT.md's Python examples, as written (issue 20 item 8): they pass ``mypy --strict`` and
run against a real worker, redis-server and devserver, only the Redis and Flight SQL addresses
replaced by the test's."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
from pathlib import Path

from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CLIENT.md"
REDIS = "redis://127.0.0.1:6379/0"
BLOBS = "/var/lib/trace-worker/blobs"
FLIGHT = "grpc://127.0.0.1:50051"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_examples_pass_mypy_strict(tmp_path: Path) -> None:
    paths = []
    for i, code in enumerate(examples()):
        path = tmp_path / f"client_doc_{i}.py"
        path.write_text(code)
        paths.append(str(path))
    assert len(paths) == 4
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml", *paths],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


async def _run(code: str, cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert not stderr, stderr.decode()
    return stdout.decode()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_the_examples_run(
    redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spawn_worker(
        worker_env(
            redis_server.url, devserver.url, (tmp_path / "blobs").as_uri(), TRACE_WORKER_KEY_PREFIX="traces"
        )
    )
    assert devserver.lake.processes[0].process_id == "9847606f-3e9b-4f1c-94f2-24328ad514a4"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    submit, watch, blocking, processes = (
        code.replace(REDIS, redis_server.url)
        .replace(FLIGHT, devserver.url)
        .replace(BLOBS, str(tmp_path / "blobs"))
        for code in examples()
    )

    out = await _run(submit, run_dir)
    progress = [line for line in out.splitlines() if line.startswith("progress")]
    assert progress and all(re.match(r"progress +\d+\.\d%", line) for line in progress), out
    assert "None" not in out
    assert "status   running  attempt 1" in out and "status   succeeded  attempt 1" in out
    size, sha = re.findall(r"trace.pftrace (\d+) bytes sha256 (\w+)", out)[0]
    assert (run_dir / "trace.pftrace").stat().st_size == int(size) and _sha256(
        run_dir / "trace.pftrace"
    ) == sha

    out = await _run(watch, run_dir)
    assert re.fullmatch(r"t-\w+ succeeded attempt 1\n", out), out

    out = await _run(blocking, run_dir)
    size, sha = re.findall(r"blob-only.pftrace (\d+) bytes sha256 (\w+)", out)[0]
    assert _sha256(run_dir / "blob-only.pftrace") == sha
    # the request's pickup ack (queued, attempt 0), then the run: running, progress, succeeded (attempt 1)
    events = out.splitlines()[1:]
    assert events[0] == "status 0" and events[1] == events[-1] == "status 1", events
    assert set(events[1:]) <= {"status 1", "progress 1"}, events

    out = await _run(processes, run_dir)
    assert {line.split()[0] for line in out.splitlines()} == {p.process_id for p in devserver.lake.processes}
