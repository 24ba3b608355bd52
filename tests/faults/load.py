"""Sustained load on one worker process: many concurrent requesters, each submitting a job and
following its stream to the end, then the next, for a bounded time and count.

Latencies are measured on Redis's own clock (stream entry ids are milliseconds): request entry id
to the job's first chunk entry id, and to its terminal status entry id. Worker RSS is sampled from
/proc every ``rss_every_s``; Redis memory (INFO used_memory) before, once every job is done, and
once every job's keys have expired (``job_ttl_s``). Used by tests/faults/test_load.py (short form)
and bench/load_service.py (long form, writes the figures)."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from contracts import JobState, Keys, StatusEvent, TraceRequest, parse_entry
from contracts.request import SpanTypes
from tests.support.worker_process import stop_process, worker_env

__all__ = ["LoadReport", "run_load"]

KEYS = Keys("t")


def _ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-")[0])


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class LoadReport:
    seconds: float = 0.0
    requesters: int = 0
    jobs: int = 0
    failed: int = 0
    spans: int = 0
    first_chunk_ms: list[int] = field(default_factory=list)
    done_ms: list[int] = field(default_factory=list)
    #: (seconds since start, worker RSS MiB)
    rss: list[tuple[float, float]] = field(default_factory=list)
    redis_before: int = 0
    redis_done: int = 0
    redis_expired: int = 0
    job_keys_done: int = 0
    job_keys_expired: int = 0
    #: Entries left on the request stream once every job ended
    requests_left: int = 0
    #: MEMORY USAGE of every key left once the jobs' keys expired
    keys_after_expiry: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _pct(values: list[int], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    @property
    def throughput(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def rss_ratio(self) -> float:
        """Mean RSS of the last third over the mean of the middle third (after warm-up): ~1 if flat."""
        values = [r for _, r in self.rss]
        third = len(values) // 3
        if third == 0:
            return 1.0
        return statistics.fmean(values[-third:]) / statistics.fmean(values[third : 2 * third])

    def summary(self) -> dict[str, Any]:
        jobs = max(self.jobs, 1)
        return {
            "seconds": round(self.seconds, 1),
            "requesters": self.requesters,
            "jobs": self.jobs,
            "failed": self.failed,
            "jobs_per_s": round(self.throughput, 2),
            "spans_per_s": round(self.spans / self.seconds) if self.seconds else 0,
            "first_chunk_p50_ms": self._pct(self.first_chunk_ms, 0.5),
            "first_chunk_p99_ms": self._pct(self.first_chunk_ms, 0.99),
            "done_p50_ms": self._pct(self.done_ms, 0.5),
            "done_p99_ms": self._pct(self.done_ms, 0.99),
            "rss_first_mb": round(self.rss[0][1], 1) if self.rss else None,
            "rss_max_mb": round(max(r for _, r in self.rss), 1) if self.rss else None,
            "rss_last_mb": round(self.rss[-1][1], 1) if self.rss else None,
            "rss_ratio_last_vs_middle_third": round(self.rss_ratio(), 3),
            "redis_bytes_per_job_live": round((self.redis_done - self.redis_before) / jobs),
            "redis_bytes_per_job_after_expiry": round((self.redis_expired - self.redis_before) / jobs),
            "job_keys_live": self.job_keys_done,
            "job_keys_after_expiry": self.job_keys_expired,
            "requests_left": self.requests_left,
            "keys_after_expiry": self.keys_after_expiry,
        }


class _RssSampler:
    def __init__(self, pid: int, every_s: float, report: LoadReport, started: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pid, every_s, report, started), daemon=True)
        self._thread.start()

    def _run(self, pid: int, every_s: float, report: LoadReport, started: float) -> None:
        while not self._stop.wait(every_s):
            rss = _rss_mb(pid)
            if rss is not None:
                report.rss.append((time.monotonic() - started, rss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def _requester(  # noqa: PLR0917 - one requester's knobs
    redis: Redis, process_ids: list[str], seed: int, until: float, max_jobs: int, report: LoadReport
) -> None:
    rng = random.Random(seed)
    n = 0
    while time.monotonic() < until and report.jobs < max_jobs:
        n += 1
        request = TraceRequest(
            process_id=rng.choice(process_ids),
            span_types=rng.choice(list(SpanTypes)),
            job_id=f"load-{seed}-{n}",
            labels={"requested_by": f"requester-{seed}"},
        )
        stream = KEYS.job(request.effective_job_id())
        entry: Any = await redis.xadd(KEYS.requests, {"request": request.to_json()})
        sent_ms, last, first_chunk = _ms(entry), "0-0", None
        while True:
            reply: Any = await redis.xread({stream: last}, block=2000, count=200)
            final: StatusEvent | None = None
            for _, rows in reply or []:
                for row_id, fields in rows:
                    last = row_id.decode()
                    if first_chunk is None and fields.get(b"type") == b"chunk":
                        first_chunk = _ms(row_id) - sent_ms
                    if fields.get(b"type") == b"status":
                        event = parse_entry(fields)
                        if isinstance(event, StatusEvent) and event.state.terminal:
                            final = event
                            report.done_ms.append(_ms(row_id) - sent_ms)
            if final is not None:
                break
        report.jobs += 1
        if final.state != JobState.SUCCEEDED:
            report.failed += 1
        report.spans += final.spans or 0
        if first_chunk is not None:
            report.first_chunk_ms.append(first_chunk)


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--consumer", "load"],
            cwd=log.parent,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _job_keys(redis: Redis) -> int:
    return sum([1 async for _ in redis.scan_iter(match="t:job:*", count=1000)])


async def _used_memory(redis: Redis) -> int:
    info: Any = await redis.info("memory")
    return int(info["used_memory"])


async def run_load(  # noqa: PLR0917 - the load's knobs
    redis_url: str,
    flight_url: str,
    process_ids: list[str],
    blobs: Path,
    log: Path,
    seconds: float,
    requesters: int = 20,
    max_jobs: int = 100_000,
    job_ttl_s: int = 5,
    rss_every_s: float = 0.5,
) -> LoadReport:
    """Run the load against one fresh worker process (stopped at the end)."""
    env = worker_env(
        redis_url,
        flight_url,
        blobs.as_uri(),
        TRACE_WORKER_WORKER_CONCURRENCY="4",
        TRACE_WORKER_JOB_TTL_S=str(job_ttl_s),
        TRACE_WORKER_EVENTS_MAXLEN="100",
        TRACE_WORKER_LOG_LEVEL="WARNING",
    )
    redis = Redis.from_url(redis_url, max_connections=requesters + 4)
    report = LoadReport(requesters=requesters)
    worker = _spawn(env, log)
    sampler: _RssSampler | None = None
    try:
        report.redis_before = await _used_memory(redis)
        started = time.monotonic()
        sampler = _RssSampler(worker.pid, rss_every_s, report, started)
        until = started + seconds
        await asyncio.gather(
            *(_requester(redis, process_ids, i, until, max_jobs, report) for i in range(requesters))
        )
        report.seconds = time.monotonic() - started
        sampler.stop()
        assert worker.poll() is None, "the worker exited under load"
        report.redis_done = await _used_memory(redis)
        report.job_keys_done = await _job_keys(redis)
        report.requests_left = int(await redis.xlen(KEYS.requests))
        deadline = time.monotonic() + job_ttl_s + 30
        while (keys := await _job_keys(redis)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.5)  # Redis's own expiry: no event to wait on
        report.job_keys_expired = keys
        report.redis_expired = await _used_memory(redis)
        async for key in redis.scan_iter(count=1000):
            usage: Any = await redis.memory_usage(key)
            report.keys_after_expiry[key.decode(errors="replace")] = int(usage or 0)
    finally:
        if sampler is not None:
            sampler.stop()
        await redis.aclose()
        stop_process(worker)
    return report


def cpu_count() -> int:
    return os.cpu_count() or 1
