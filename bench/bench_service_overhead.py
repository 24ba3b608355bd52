"""The service's own cost per job: a real ``Service`` (Redis streams, leases, statuses, blob writes)
over a stub generator that costs no CPU, so what the worker process spends is the service's part of
a small job (faststream, redis-py round trips, answers, progress, chunks, the file blob), apart
from the engine and the Flight SQL source that ``bench_service`` measures with it.

The stub yields what a small job yields (a header chunk, then the body; a progress report per
thread batch) after waiting ``--wait-ms`` (the source's time, no CPU). The worker runs in a child
process (default settings but the Redis URL, key prefix and file blob store); this process is the
requesters (``bench_service``'s: 20 TraceClient requesters, each waiting on its own job).

Reports per job: the worker's CPU (user+sys from /proc), its Redis round trips (writes on its
client connections, counted in the worker; a pipeline or MULTI is one) and the Redis commands of
all clients (INFO commandstats, commands run inside scripts included), and jobs/s with latency.

    .venv/bin/python -m bench.bench_service_overhead [--jobs 300] [--requesters 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.bench_service import KEYS, cpu_s, pct, redis_commands, small_jobs
from contracts import TraceRequest
from tests.support.redis_server import RedisServer
from tests.support.worker_process import stop_process
from worker.service.ports import ProgressLike
from worker.settings import Settings

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"
ROOT = Path(__file__).resolve().parents[1]


class _Report:
    """What the stub reports as progress (the fields the service reads)."""

    def __init__(self, phase: str, spans: int, size: int, done: int, total: int) -> None:
        self.phase, self.spans, self.bytes = phase, spans, size
        self.threads_done, self.threads_total = done, total
        self.percent = 99.0 * done / total


class StubGenerator:
    """A small job's shape without its CPU: header chunk, ``threads`` progress reports, body chunk."""

    def __init__(self, wait_s: float, threads: int = 8, header: int = 2_000, body: int = 400_000) -> None:
        self.wait_s, self.threads = wait_s, threads
        self.header, self.body = os.urandom(header), os.urandom(body)

    async def generate(
        self,
        request: TraceRequest,
        *,
        on_progress: Callable[[ProgressLike], None],
        should_stop: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[bytes]:
        on_progress(_Report("start", 0, 0, 0, self.threads))
        yield self.header
        await asyncio.sleep(self.wait_s)
        for t in range(self.threads):
            on_progress(_Report("thread_spans", 1250 * (t + 1), 50_000 * (t + 1), t + 1, self.threads))
            await should_stop()
        yield self.body

    async def ping(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def serve(redis_url: str, blob_dir: str, wait_s: float) -> None:
    """The worker process: a Service over the stub; prints its Redis round trips on each stdin line."""
    from redis.asyncio.connection import AbstractConnection  # noqa: PLC0415 - patched before any client

    from worker.service.app import Service  # noqa: PLC0415
    from worker.sinks.blob import blob_store_from_settings  # noqa: PLC0415

    sent = [0]
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]

    def answer() -> None:
        for _ in sys.stdin:
            print(sent[0], flush=True)

    threading.Thread(target=answer, daemon=True).start()
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        key_prefix=KEYS.prefix,
        blob_url=f"file://{blob_dir}",
        http_host="",
        log_level="WARNING",
    )

    async def main() -> None:
        store = blob_store_from_settings(settings)
        service = Service(settings, generator=StubGenerator(wait_s), store=store, consumer="bench")
        await service.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def measure(args: argparse.Namespace, url: str, worker: subprocess.Popen[str]) -> None:
    assert worker.stdin is not None and worker.stdout is not None
    stdin, stdout = worker.stdin, worker.stdout

    def round_trips() -> int:
        stdin.write("\n")
        stdin.flush()
        return int(stdout.readline())

    redis = Redis.from_url(url)
    try:
        await small_jobs(redis, PID, 20, args.requesters, prefix="warm")
        print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
        print("| round | jobs/s | p50 / p99 ms | worker CPU ms/job | worker round trips/job "
              "| Redis commands/job |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for r in range(args.rounds):
            cpu0, rt0, cmd0 = cpu_s(worker.pid), round_trips(), await redis_commands(redis)
            wall, lat, failures = await small_jobs(redis, PID, args.jobs, args.requesters, prefix=f"r{r}")
            cpu1, rt1, cmd1 = cpu_s(worker.pid), round_trips(), await redis_commands(redis)
            n = args.jobs
            commands = (sum(cmd1.values()) - sum(cmd0.values())) / n
            lat_ms = sorted(x * 1000 for x in lat)
            print(
                f"| {r + 1} | {n / wall:.1f} | {statistics.median(lat_ms):.0f} / {pct(lat_ms, 99):.0f} "
                f"| {(cpu1 - cpu0) * 1000 / n:.2f} | {(rt1 - rt0) / n:.2f} | {commands:.1f} |"
                + (f" {failures} failed" if failures else "")
            )
        print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
    finally:
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--requesters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wait-ms", type=float, default=50.0, help="the stub's wait between chunks")
    parser.add_argument("--serve", nargs=2, metavar=("REDIS_URL", "BLOB_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], args.wait_ms / 1000)
        return 0
    server = RedisServer().start()
    blobs = tempfile.mkdtemp(prefix="tw-bench-overhead-")
    cmd = [sys.executable, "-m", "bench.bench_service_overhead", "--wait-ms", str(args.wait_ms),
           "--serve", server.url, blobs]  # fmt: skip
    worker = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        deadline = time.monotonic() + 60
        while worker.stdout.readline().strip() != "ready":
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the worker did not start")
        asyncio.run(measure(args, server.url, worker))
    finally:
        stop_process(worker, timeout=30)
        server.close()
        subprocess.run(["rm", "-rf", blobs], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
