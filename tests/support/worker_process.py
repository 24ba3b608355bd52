"""Worker processes (`python -m worker run`) for tests, with settings for quick leases and retries.

from tests.support.worker_process import Spawn, spawn_worker, worker_env  # noqa: F401
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Spawn", "spawn_worker", "stop_process", "worker_env"]

ROOT = Path(__file__).resolve().parents[2]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def worker_env(redis_url: str, flight_url: str, blob_url: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "TRACE_WORKER_REDIS_URL": redis_url,
            "TRACE_WORKER_FLIGHTSQL_URL": flight_url,
            "TRACE_WORKER_BLOB_URL": blob_url,
            "TRACE_WORKER_KEY_PREFIX": "t",
            "TRACE_WORKER_HTTP_PORT": "0",
            "TRACE_WORKER_LEASE_S": "2",
            "TRACE_WORKER_HEARTBEAT_S": "0.5",
            "TRACE_WORKER_RECLAIM_INTERVAL_S": "0.3",
            "TRACE_WORKER_RETRY_BACKOFF_S": "0.1",
            "TRACE_WORKER_CHUNK_SIZE": "65536",
            "TRACE_WORKER_PROGRESS_INTERVAL_S": "0.05",
        }
    )
    env.update(more)
    return env


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Spawn]:
    """Start worker processes; every one is stopped at the end, its log printed if the test failed."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(env: dict[str, str], name: str = "w") -> subprocess.Popen[bytes]:
        log = tmp_path / f"worker-{name}-{len(procs)}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run", "--consumer", f"{name}-{len(procs)}"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append((proc, log))
        return proc

    yield spawn
    for proc, log in procs:
        stop_process(proc)
        if proc.returncode not in (0, -signal.SIGKILL):
            print(f"--- {log.name} (exit {proc.returncode})\n{log.read_text(errors='replace')[-4000:]}")
