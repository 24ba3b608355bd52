"""Service benchmark: Redis + devserver + a `trace-worker run` process on loopback, driven through
the wire contract with a raw Redis client.

Measures, on this machine:
- a large job (default: the devserver's 5M-span ``large`` process) end to end: spans/s from XADD
  of the request to the terminal status (chunks on the job stream and the blob both written),
  then checks that the chunks and the blob have the status's sha256;
- time to first chunk (request XADD → first chunk entry) for a small, a typical and the large job;
- 100 small jobs (distinct job ids over the 10k-span ``small`` process) from 20 concurrent
  requesters (each a :class:`contracts.client.TraceClient` that submits and waits): throughput,
  p50/p99 latency, the worker process's CPU time per job (user + sys from
  /proc, the devserver's and the bench's own apart) and the Flight SQL calls per job (the worker's
  ``trace_worker_flightsql_calls`` counter from /metrics);
- the worker's peak RSS (sampled from /proc every 20 ms) during each job size;
- the CPU time (user+sys, from /proc) of the worker, the devserver and redis-server during each
  large job, and the worker's CPU-s per million spans: what the rate would be if the source were
  free is bounded by the worker's CPU.

The devserver serves its lake from memory (``--in-memory``, generated before it listens, so the
source is not the bottleneck); ``--no-in-memory`` generates rows on the fly as the default server.

    .venv/bin/python -m bench.bench_service [--large-spans 5000000] [--small-jobs 100] [--requesters 20]
    .venv/bin/python -m bench.bench_service --small-only   # only the small jobs (and a warm-up job)
    .venv/bin/python -m bench.bench_service --large-only --large-runs 3   # the large job, 3 times
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from contracts import Keys, TraceRequest
from contracts.client import TraceClient
from contracts.states import JobState
from tests.support.devserver import run_devserver_subprocess
from tests.support.redis_server import RedisServer, free_port
from tests.support.worker_process import stop_process
from worker.devserver import Lake, LakeConfig

ROOT = Path(__file__).resolve().parents[1]
KEYS = Keys("bench")


class RssSampler:
    """Samples a process's VmRSS in a thread; :meth:`window` gives the peak since the last call."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, self._rss_mb())

    def window(self) -> float:
        peak, self._peak = self._peak, self._rss_mb()
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class JobResult:
    job_id: str
    state: str
    first_chunk_s: float | None
    total_s: float
    spans: int
    size: int
    sha256: str


async def _wait_terminal(redis: Redis, job_id: str, since: str) -> tuple[dict[str, str], str]:
    """Wait on the events stream (statuses only, no chunk data) for the job's terminal status."""
    last = since
    while True:
        reply: Any = await redis.xread({KEYS.events: last}, block=2000, count=500)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                f = {k.decode(): v.decode() for k, v in fields.items()}
                if f.get("job_id") == job_id and f["state"] in ("succeeded", "failed", "cancelled", "dead"):
                    return f, last


async def run_job(redis: Redis, request: TraceRequest, *, watch_first_chunk: bool) -> JobResult:
    job_id = request.effective_job_id()
    events_tail: Any = await redis.xrevrange(KEYS.events, count=1)
    since = events_tail[0][0].decode() if events_tail else "0-0"
    t0 = time.perf_counter()
    await redis.xadd(KEYS.requests, {"request": request.to_json()})
    first: float | None = None
    if watch_first_chunk:
        last = "0-0"
        while first is None:
            reply: Any = await redis.xread({KEYS.job(job_id): last}, block=2000, count=1)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    if fields.get(b"type") == b"chunk":
                        first = time.perf_counter() - t0
                    elif fields.get(b"state") in (b"failed", b"dead"):
                        raise RuntimeError(f"job failed: {fields}")
    status, _ = await _wait_terminal(redis, job_id, since)
    total = time.perf_counter() - t0
    return JobResult(job_id, status["state"], first, total, int(status.get("spans", 0)),
                     int(status.get("size", 0)), status.get("sha256", ""))  # fmt: skip


async def fairness(redis: Redis, small_pid: str, large_pid: str) -> tuple[float, float]:
    """Latency of a small job submitted once a large job streams (same worker, free slots)."""
    big = asyncio.create_task(
        run_job(redis, TraceRequest(process_id=large_pid, job_id="fair-large"), watch_first_chunk=True)
    )
    last = "0-0"
    while True:  # wait until the large job streams chunks
        reply: Any = await redis.xread({KEYS.job("fair-large"): last}, block=2000, count=1)
        entries = reply[0][1] if reply else []
        if entries:
            last = entries[-1][0].decode()
            if any(f.get(b"type") == b"chunk" for _, f in entries):
                break
    res = await run_job(
        redis, TraceRequest(process_id=small_pid, job_id="fair-small"), watch_first_chunk=False
    )
    large = await big
    return res.total_s, large.total_s


async def chunks_sha256(redis: Redis, job_id: str) -> tuple[str, int]:
    """sha256 of the succeeding attempt's chunks, streamed with XRANGE (never held whole)."""
    state: Any = await redis.hgetall(KEYS.state(job_id))
    attempt = state[b"attempt"]
    h, n, start = hashlib.sha256(), 0, "-"
    while True:
        page: Any = await redis.xrange(KEYS.job(job_id), min=start, max="+", count=64)
        if not page:
            break
        for _, fields in page:
            if fields.get(b"type") == b"chunk" and fields[b"attempt"] == attempt:
                h.update(fields[b"data"])
                n += 1
        start = "(" + page[-1][0].decode()
    return h.hexdigest(), n


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def small_jobs(
    redis: Redis, pid: str, jobs: int, requesters: int, *, prefix: str = "small"
) -> tuple[float, list[float], int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(jobs):
        queue.put_nowait(i)
    latencies: list[float] = []
    failures = 0

    async def requester(n: int) -> None:
        # A requester waits as the project's client does: it follows its own job's status stream
        # (one blocking XREAD per batch of its entries), not every job's status on the events stream.
        nonlocal failures
        async with TraceClient(redis_url_of(redis), KEYS.prefix, client_name=f"bench-{n}") as client:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                req = TraceRequest(process_id=pid, job_id=f"{prefix}-{n}-{i}", chunks=True)
                t0 = time.perf_counter()
                status = await (await client.submit(req)).wait()
                latencies.append(time.perf_counter() - t0)
                failures += status.state != JobState.SUCCEEDED

    t0 = time.perf_counter()
    await asyncio.gather(*(requester(n) for n in range(requesters)))
    return time.perf_counter() - t0, latencies, failures


def redis_url_of(redis: Redis) -> str:
    kw = redis.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_s(pid: int | None) -> float:
    """User+sys CPU seconds a process used so far (0 when unknown or gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flightsql_calls(metrics_url: str) -> dict[str, float]:
    """The worker's ``trace_worker_flightsql_calls_total`` by call (empty if it has no such metric)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    calls: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("trace_worker_flightsql_calls_total{"):
            labels, value = line.rsplit(" ", 1)
            calls[labels.split('call="', 1)[1].split('"', 1)[0]] = float(value)
    return calls


async def redis_commands(redis: Redis) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats)."""
    info: Any = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


@dataclass
class Procs:
    """The processes whose CPU time the small-jobs part reports, and the worker's /metrics."""

    worker: int
    devserver: int
    metrics_url: str
    redis: int | None = None


async def small_jobs_rows(
    args: argparse.Namespace, redis: Redis, pid: str, procs: Procs
) -> list[tuple[str, str]]:
    """``--small-rounds`` rounds of the small-jobs run: throughput, latency, CPU and calls per job."""
    rows: list[tuple[str, str]] = []
    n = args.small_jobs
    for r in range(args.small_rounds):
        tag = f" (round {r + 1})" if args.small_rounds > 1 else ""
        calls0, load = flightsql_calls(procs.metrics_url), os.getloadavg()[0]
        cmds0 = await redis_commands(redis)
        cpu0 = (cpu_s(procs.worker), cpu_s(procs.devserver), time.process_time())
        wall, lat, failures = await small_jobs(redis, pid, n, args.requesters, prefix=f"small{r}")
        cpu1 = (cpu_s(procs.worker), cpu_s(procs.devserver), time.process_time())
        calls1 = flightsql_calls(procs.metrics_url)
        cmds = {k: (v - cmds0.get(k, 0)) / n for k, v in (await redis_commands(redis)).items()}
        worker_ms, dev_ms, bench_ms = ((b - a) * 1000 / n for a, b in zip(cpu0, cpu1, strict=True))
        rows.append(
            (
                f"{n} small jobs, {args.requesters} requesters{tag}",
                f"{wall:.2f} s, {n / wall:.1f} jobs/s, {failures} failed",
            )
        )
        p50, p99, mean = pct(lat, 50) * 1000, pct(lat, 99) * 1000, statistics.mean(lat) * 1000
        rows.append(("small job latency p50 / p99 / mean", f"{p50:.0f} / {p99:.0f} / {mean:.0f} ms"))
        rows.append(
            (
                "CPU per small job: worker / devserver / bench",
                f"**{worker_ms:.1f}** / {dev_ms:.1f} / {bench_ms:.1f} ms",
            )
        )
        per_job = {k: (calls1.get(k, 0) - calls0.get(k, 0)) / n for k in sorted(calls1)}
        shown = ", ".join(f"{k} {v:.2f}" for k, v in per_job.items()) or "n/a (no counter)"
        rows.append(("Flight SQL calls per small job", shown))
        busy = sorted(((v, k) for k, v in cmds.items() if v >= 0.05), reverse=True)
        rows.append(
            (
                "Redis commands per small job (all clients; the requesters': TraceClient submit and wait)",
                f"{sum(cmds.values()):.1f}: " + ", ".join(f"{k} {v:.1f}" for v, k in busy),
            )
        )
        rows.append(("load average (1 min) before / after", f"{load:.1f} / {os.getloadavg()[0]:.1f}"))
    return rows


async def large_runs(
    redis: Redis, args: argparse.Namespace, pid: str, out_dir: Path, pids: Procs
) -> tuple[list[tuple[str, str]], JobResult]:
    """The large job ``args.large_runs`` times (distinct job ids): rows per run, and the fastest run."""
    rows: list[tuple[str, str]] = []
    best: JobResult | None = None
    for run in range(args.large_runs):
        procs = (pids.worker, pids.devserver, pids.redis)
        before = [cpu_s(p) for p in procs]
        res = await run_job(redis, TraceRequest(process_id=pid, job_id=f"size-large-{run}"),
                            watch_first_chunk=True)  # fmt: skip
        worker, dev, rds = (cpu_s(p) - b for p, b in zip(procs, before, strict=True))
        if res.state != "succeeded":
            raise RuntimeError(f"large job ended {res.state}")
        sha, nchunks = await chunks_sha256(redis, res.job_id)
        blob = out_dir / pid / f"{res.job_id}.pftrace"
        blob_ok = blob.stat().st_size == res.size and file_sha256(blob) == res.sha256
        if not (sha == res.sha256 and blob_ok):
            raise RuntimeError(f"large job {res.job_id}: chunks, blob and status sha256 differ")
        blob.unlink()  # keep the disk (and the page cache) from filling over runs
        load = os.getloadavg()[0]
        rows.append((
            f"large job run {run + 1}: request → succeeded",
            f"{res.total_s:.2f} s, {res.spans / res.total_s / 1e3:,.0f} k spans/s, worker "
            f"{worker:.2f} CPU-s ({worker / res.spans * 1e6:.3f} per M spans), devserver {dev:.2f}, "
            f"redis {rds:.2f} CPU-s, {nchunks} chunks, load {load:.1f}",
        ))  # fmt: skip
        if best is None or res.total_s < best.total_s:
            best = res
    assert best is not None
    return rows, best


async def measure(
    args: argparse.Namespace, redis_url: str, lake: Lake, out_dir: Path, rss: RssSampler, *, procs: Procs
) -> None:
    """Run the jobs and print the table."""
    small, typical, large = lake.processes
    redis = Redis.from_url(redis_url)
    try:
        rows: list[tuple[str, str]] = []
        warm = TraceRequest(process_id=small.process_id, job_id="warm")
        await run_job(redis, warm, watch_first_chunk=True)  # imports, connections: not measured
        rss.window()
        if args.small_only:
            rows += await small_jobs_rows(args, redis, small.process_id, procs)
            _print(rows)
            return
        results: dict[str, tuple[JobResult, float]] = {}
        sizes = () if args.large_only else (("small", small), ("typical", typical))
        for label, proc in sizes:
            req = TraceRequest(process_id=proc.process_id, job_id=f"size-{label}")
            res = await run_job(redis, req, watch_first_chunk=True)
            results[label] = (res, rss.window())
            if res.state != "succeeded":
                raise RuntimeError(f"{label} job ended {res.state}")
        run_rows, big = await large_runs(redis, args, large.process_id, out_dir, procs)
        results["large"] = (big, rss.window())
        rows.append(("large job spans", f"{big.spans:,}"))
        rows.append(("large job trace size", f"{big.size / 1e6:.1f} MB"))
        rows.extend(run_rows)
        rows.append(("large job request → succeeded (best run)", f"{big.total_s:.2f} s"))
        rows.append(("large job throughput", f"**{big.spans / big.total_s / 1e3:,.0f} k spans/s**"))
        rows.append(("chunks sha256 == blob sha256 == status", "True"))
        for label, (res, _) in results.items():
            first_ms = (res.first_chunk_s or 0) * 1000
            rows.append((f"time to first chunk, {label} ({res.spans:,} spans)", f"{first_ms:.0f} ms"))
        for label, (_, peak) in results.items():
            rows.append((f"worker peak RSS during {label} job", f"{peak:.0f} MB"))
        if args.large_only:
            _print(rows)
            return
        fair_small, fair_large = await fairness(redis, small.process_id, large.process_id)
        rows.append(("small job alone → succeeded", f"{results['small'][0].total_s * 1000:.0f} ms"))
        rows.append(("small job while a large job runs → succeeded", f"{fair_small * 1000:.0f} ms"))
        rows.append(("(that large job → succeeded)", f"{fair_large:.2f} s"))
        rows += await small_jobs_rows(args, redis, small.process_id, procs)
        _print(rows)
    finally:
        await redis.aclose()


def _print(rows: list[tuple[str, str]]) -> None:
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--large-spans", type=int, default=5_000_000)
    parser.add_argument("--small-jobs", type=int, default=100)
    parser.add_argument("--requesters", type=int, default=20)
    parser.add_argument(
        "--concurrency", type=int, default=None, help="worker_concurrency of the worker (default: its own)"
    )
    parser.add_argument("--small-only", action="store_true", help="only the small jobs (after a warm-up job)")
    parser.add_argument("--small-rounds", type=int, default=1, help="rounds of the small-jobs run")
    parser.add_argument("--large-runs", type=int, default=1, help="run the large job this many times")
    parser.add_argument("--large-only", action="store_true", help="only the large job (no small jobs)")
    parser.add_argument(
        "--in-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="devserver serves its lake from memory, generated before it listens (default on)",
    )
    args = parser.parse_args()
    lake = Lake(LakeConfig(processes=("small", "typical", "large"), large_spans=args.large_spans))
    server = RedisServer().start()
    out_dir = Path(tempfile.mkdtemp(prefix="tw-bench-blobs-"))
    flags = ["--processes", "small,typical,large", "--large-spans", str(args.large_spans)]
    worker: subprocess.Popen[bytes] | None = None
    http_port = free_port()
    try:
        with run_devserver_subprocess(flags, in_memory=args.in_memory) as dev:
            env = {
                **os.environ,
                "TRACE_WORKER_REDIS_URL": server.url,
                "TRACE_WORKER_FLIGHTSQL_URL": dev.url,
                "TRACE_WORKER_BLOB_URL": f"file://{out_dir}",
                "TRACE_WORKER_KEY_PREFIX": KEYS.prefix,
                "TRACE_WORKER_HTTP_PORT": str(http_port),
                "TRACE_WORKER_LOG_LEVEL": "WARNING",
            }
            if args.concurrency is not None:
                env["TRACE_WORKER_WORKER_CONCURRENCY"] = str(args.concurrency)
            cmd = [sys.executable, "-m", "worker", "run", "--consumer", "bench"]
            worker = subprocess.Popen(cmd, cwd=ROOT, env=env)
            rss = RssSampler(worker.pid)
            try:
                redis_pid = server.proc.pid if server.proc is not None else None
                metrics = f"http://127.0.0.1:{http_port}/metrics"
                procs = Procs(worker.pid, dev.proc.pid, metrics, redis_pid)
                asyncio.run(_while_alive(worker, measure(args, server.url, lake, out_dir, rss, procs=procs)))
            finally:
                rss.stop()
    finally:
        if worker is not None:
            stop_process(worker, timeout=60)
        server.close()
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


async def _while_alive(worker: subprocess.Popen[bytes], work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; stop with an error as soon as the worker process exits (a worker that dies would
    otherwise leave the requesters waiting for ever)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        if worker.poll() is not None and not task.done():
            task.cancel()
            raise SystemExit(f"the worker exited (status {worker.returncode}) during the bench")
    task.result()


if __name__ == "__main__":
    sys.exit(main())
