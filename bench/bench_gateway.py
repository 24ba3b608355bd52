"""Gateway latencies and download rate against the real stack (results in docs/GATEWAY.md).

A private redis-server, the devserver (``small`` and ``typical`` processes) in this process, one
worker and ``trace-worker gateway`` as subprocesses; httpx as the HTTP client. Times the process
list, each process's statistics, 100 log lines, a ``typical`` job followed by SSE until it
succeeds, and two downloads of its trace (sha256 checked).

    .venv/bin/python -m bench.bench_gateway
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.devserver import start_devserver
from tests.support.gateway_process import run_gateway
from tests.support.redis_server import RedisServer
from tests.support.worker_process import stop_process, worker_env
from worker.devserver import Lake, LakeConfig


def _ms(started: float) -> str:
    return f"{1000 * (time.perf_counter() - started):.0f} ms"


def main() -> None:
    redis = RedisServer().start()
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    lake = Lake(LakeConfig(seed=42, processes=("small", "typical")))
    try:
        with start_devserver(lake) as dev:
            env = worker_env(redis.url, dev.url, (work / "blobs").as_uri(), TRACE_WORKER_CHUNK_SIZE="1044480")
            worker = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                with run_gateway(env) as gw, httpx.Client(base_url=gw.url, timeout=300) as http:
                    _run(http, lake)
            finally:
                stop_process(worker)
    finally:
        redis.close()


def _run(http: httpx.Client, lake: Lake) -> None:
    for _ in range(2):  # warm-up: connections to Redis and the Flight SQL service
        http.get("/api/processes").raise_for_status()
    started = time.perf_counter()
    http.get("/api/processes").raise_for_status()
    print(f"GET /api/processes                  {_ms(started)}")
    for p in lake.processes:
        started = time.perf_counter()
        stats = http.get(f"/api/processes/{p.process_id}").json()
        print(f"GET /api/processes/<{p.kind}>   {stats['thread_spans']:,} thread spans  {_ms(started)}")
    typical = lake.processes[1].process_id
    started = time.perf_counter()
    http.get(f"/api/processes/{typical}/logs", params={"limit": 100}).raise_for_status()
    print(f"GET .../logs?limit=100              {_ms(started)}")
    job = http.post("/api/traces", json={"process_id": typical}).json()
    started = time.perf_counter()
    with http.stream("GET", job["links"]["events"]) as events:
        count = sum(1 for line in events.iter_lines() if line.startswith("event:"))
    print(f"POST + SSE until terminal           {time.perf_counter() - started:.1f} s, {count} events")
    status = http.get(job["links"]["self"]).json()
    for _ in range(2):
        started = time.perf_counter()
        answer = http.get(job["links"]["trace"])
        took = time.perf_counter() - started
        assert hashlib.sha256(answer.content).hexdigest() == status["sha256"]
        mib = len(answer.content) / 2**20
        print(f"GET .../trace  {mib:.1f} MiB in {took:.2f} s = {mib / took:.0f} MiB/s (sha256 ok)")


if __name__ == "__main__":
    main()
