"""Scale-out benchmark on a Redis Cluster: 1, 2 and 4 `trace-worker run` processes on the same
three-master cluster (tests/support/redis_cluster.py), the devserver over loopback, and one
``TraceClient(cluster=True)`` submitting every request at once and following every job.

Per configuration: 200 small jobs (the devserver's 10k-span ``small`` process, distinct job ids)
and 4 large ones (the ``large`` process, ``--large-spans``), all submitted together; wall time from
the first submission to the last terminal status, jobs/s, spans/s, and the latency (submission to
terminal status, as the client sees it) p50/p99 of each kind. The machine's core count and load
average (``/proc/loadavg``, before and after) are printed beside each row: every process (three
redis-server masters, the devserver, the workers, the client) shares these cores.

    .venv/bin/python -m bench.bench_cluster [--workers 1,2,4] [--small 200] [--large 4] [--large-spans 500000]
        [--one-server]

``--one-server`` runs the same on one redis-server instead (the baseline the cluster is compared with).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from contracts import JobState, TraceRequest
from contracts.client import TraceClient
from tests.support.devserver import run_devserver_subprocess
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer, free_port
from tests.support.worker_process import stop_process
from worker.devserver import Lake, LakeConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    workers: int
    wall_s: float
    jobs: int
    failed: int
    spans: int
    small: list[float]
    large: list[float]
    load_before: str
    load_after: str
    #: CPU seconds of this process (the client: submissions and its reader) during the jobs.
    client_cpu_s: float


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _ready(ports: list[int], within: float = 120.0) -> None:
    """Wait until every worker's /readyz answers 200 (its subscriber reads the request stream)."""
    deadline = time.monotonic() + within
    for port in ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker on port {port} did not get ready")
            time.sleep(0.1)  # polling a readiness condition


def run_configuration(
    cluster: RedisCluster | RedisServer, flight_url: str, lake: Lake, workers: int, args: argparse.Namespace
) -> Row:
    """Start ``workers`` worker processes on a key prefix of their own, run the jobs, stop them."""
    prefix = f"bench{workers}"
    blobs = Path(tempfile.mkdtemp(prefix=f"tw-bench-cluster-{prefix}-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")},
        "PYTHONPATH": str(ROOT),
        "TRACE_WORKER_REDIS_URL": cluster.url,
        "TRACE_WORKER_REDIS_CLUSTER": str(isinstance(cluster, RedisCluster)).lower(),
        "TRACE_WORKER_FLIGHTSQL_URL": flight_url,
        "TRACE_WORKER_BLOB_URL": blobs.as_uri(),
        "TRACE_WORKER_KEY_PREFIX": prefix,
        "TRACE_WORKER_WORKER_CONCURRENCY": str(args.concurrency),
        "TRACE_WORKER_LOG_LEVEL": "WARNING",
    }
    ports = [free_port() for _ in range(workers)]
    procs = []
    try:
        for i, port in enumerate(ports):
            cmd = [
                sys.executable,
                "-m",
                "worker",
                "run",
                "--consumer",
                f"{prefix}-{i}",
                "--http-port",
                str(port),
            ]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env))
        _ready(ports)
        return asyncio.run(_jobs(cluster, prefix, lake, workers, args))
    finally:
        for proc in procs:
            stop_process(proc, timeout=60)
        shutil.rmtree(blobs, ignore_errors=True)


async def _jobs(
    cluster: RedisCluster | RedisServer, prefix: str, lake: Lake, workers: int, args: argparse.Namespace
) -> Row:
    small_pid, large_pid = (p.process_id for p in lake.processes)
    on_cluster = isinstance(cluster, RedisCluster)
    async with TraceClient(cluster.url, prefix, cluster=on_cluster, reconnect_timeout_s=120) as client:
        warm = await client.submit(TraceRequest(process_id=small_pid, job_id="warm"))
        await warm.wait(timeout=300)
        requests = [TraceRequest(process_id=large_pid, job_id=f"large-{i}") for i in range(args.large)]
        requests += [TraceRequest(process_id=small_pid, job_id=f"small-{i}") for i in range(args.small)]
        before = loadavg()
        cpu0 = time.process_time()
        t0 = time.perf_counter()

        async def one(request: TraceRequest) -> tuple[str, float, int, str]:
            handle = await client.submit(request)
            status = await handle.wait(timeout=1800)
            return request.job_id or "", time.perf_counter() - t0, status.spans or 0, status.state.value

        # submitted at once: t0 is every job's submission time (the submissions take milliseconds)
        results = await asyncio.gather(*(one(r) for r in requests))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        after = loadavg()
    return Row(
        workers=workers,
        wall_s=wall,
        jobs=len(results),
        failed=sum(state != JobState.SUCCEEDED.value for *_, state in results),
        spans=sum(spans for _, _, spans, _ in results),
        small=[t for job, t, _, _ in results if job.startswith("small")],
        large=[t for job, t, _, _ in results if job.startswith("large")],
        load_before=before,
        load_after=after,
        client_cpu_s=cpu,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker processes per configuration")
    parser.add_argument("--small", type=int, default=200, help="small jobs per configuration")
    parser.add_argument("--large", type=int, default=4, help="large jobs per configuration")
    parser.add_argument("--large-spans", type=int, default=500_000, help="thread spans of the large process")
    parser.add_argument("--concurrency", type=int, default=4, help="worker_concurrency of each worker")
    parser.add_argument("--one-server", action="store_true", help="one redis-server instead of a cluster")
    args = parser.parse_args()
    lake = Lake(LakeConfig(processes=("small", "large"), large_spans=args.large_spans))
    cluster = RedisServer().start() if args.one_server else RedisCluster().start()
    rows: list[Row] = []
    try:
        flags = ["--processes", "small,large", "--large-spans", str(args.large_spans)]
        with run_devserver_subprocess(flags) as dev:
            for n in (int(x) for x in args.workers.split(",")):
                rows.append(run_configuration(cluster, dev.url, lake, n, args))
                print(f"{n} worker(s) done in {rows[-1].wall_s:.1f} s", file=sys.stderr)
    finally:
        cluster.close()
    where = "one redis-server" if args.one_server else "a 3-master Redis Cluster"
    print(
        f"{where}; cores: {os.cpu_count()}; {args.small} small + {args.large} large "
        f"({args.large_spans:,} spans) jobs per row, worker_concurrency {args.concurrency}"
    )
    columns = (
        "workers",
        "wall",
        "jobs/s",
        "k spans/s",
        "small p50 / p99",
        "large p50 / p99",
        "failed",
        "client CPU",
        "load",
    )
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for r in rows:
        small = f"{pct(r.small, 50):.1f} / {pct(r.small, 99):.1f} s"
        large = f"{pct(r.large, 50):.1f} / {pct(r.large, 99):.1f} s"
        print(
            f"| {r.workers} | {r.wall_s:.1f} s | {r.jobs / r.wall_s:.1f} | {r.spans / r.wall_s / 1e3:,.0f} | "
            f"{small} | {large} | {r.failed} | {r.client_cpu_s:.1f} s | {r.load_before} → {r.load_after} |"
        )
    return 0 if all(r.failed == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
