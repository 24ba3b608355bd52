"""Output into a pipe whose reader is gone (``trace-worker processes | head -2``): the command stops
quietly, as Unix tools do: no traceback, no misleading error, exit status 141 (128 + SIGPIPE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.devserver import small_lake, start_devserver
from tests.support.redis_server import RedisServer
from worker.cli import EXIT_PIPE

ROOT = Path(__file__).resolve().parents[2]


def run_into_closed_pipe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``trace-worker ARGS`` with stdout a pipe whose read end is already closed: the first
    write fails with EPIPE, deterministically (``head`` exiting early, without the race)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")}


def test_processes_into_a_closed_pipe_exits_quietly() -> None:
    with start_devserver(small_lake()) as server:
        done = run_into_closed_pipe("processes", "--flightsql", server.url, env=clean_env())
    assert (done.returncode, done.stderr) == (EXIT_PIPE, "")


def test_jobs_into_a_closed_pipe_exits_quietly(redis_server: RedisServer) -> None:
    # Was "cannot reach Redis: Broken pipe", exit 1: the pipe is ours, not Redis's.
    done = run_into_closed_pipe("jobs", env={**clean_env(), "TRACE_WORKER_REDIS_URL": redis_server.url})
    assert (done.returncode, done.stderr) == (EXIT_PIPE, "")
