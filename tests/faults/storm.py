"""The crash storm: worker processes SIGKILLed at seeded moments while a queue of mixed jobs drains.

Used by tests/faults/test_crash_storm.py (short form in CI, long form under the ``long`` marker).

What "exactly one terminal state" means here: every job has a distinct job id and none is expected
to fail, so each job stream must hold exactly one status entry in a terminal state (succeeded) and
``<prefix>:events`` exactly one terminal event for the job. (A failed job may legitimately be
resubmitted and run again; nothing here fails, so nothing is resubmitted.)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from contracts import JobState, Keys, StatusEvent, TraceRequest, parse_entry
from contracts.events import ChunkEvent
from contracts.request import SpanTypes
from tests.support.chaos import blob_leftovers
from tests.support.worker_process import worker_env
from worker.devserver import DevServer
from worker.pipeline import generate_trace
from worker.service.generator import spec_for
from worker.service.job import blob_key
from worker.settings import Settings
from worker.source import FlightSqlConfig, FlightSqlSource

__all__ = [
    "StormReport",
    "check_blob_folder",
    "make_requests",
    "reference_traces",
    "run_storm",
    "verify_storm",
]

KEYS = Keys("t")
CHUNK_SIZE = 65536


def _at(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.UTC).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )


def make_requests(server: DevServer, count: int, seed: int) -> list[TraceRequest]:
    """``count`` distinct jobs over the server's processes: sizes, span types, ranges and chunking mixed."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        proc = server.lake.processes[i % len(server.lake.processes)]
        begin = end = None
        if rng.random() < 0.4:  # a sub-range: cuts through spans at both ends
            length = proc.end_ns - proc.begin_ns
            b = proc.begin_ns + int(length * rng.uniform(0.0, 0.4))
            begin, end = _at(b), _at(b + int(length * rng.uniform(0.2, 0.6)))
        out.append(
            TraceRequest(
                process_id=proc.process_id,
                begin=begin,
                end=end,
                span_types=rng.choice(list(SpanTypes)),
                chunks=rng.random() < 0.8,
                job_id=f"storm-{seed}-{i}",
                labels={"requested_by": "storm", "n": str(i)},
            )
        )
    return out


@dataclass
class StormReport:
    jobs: int
    kills: int
    seconds: float
    attempts: Counter[int] = field(default_factory=Counter)
    workers_started: int = 0


async def _events_until_done(
    redis: Redis, job_ids: set[str], on_running: Callable[[int], None], within: float
) -> None:
    """Follow ``<prefix>:events`` (XREAD BLOCK) until every job has a terminal event."""
    done: set[str] = set()
    running = 0
    last = "0-0"
    deadline = time.monotonic() + within
    while done != job_ids:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{len(job_ids - done)} jobs not finished in {within}s: "
                                 f"{sorted(job_ids - done)[:10]}")  # fmt: skip
        reply: Any = await redis.xread({KEYS.events: last}, block=int(min(left, 2.0) * 1000) + 1, count=500)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id.decode()
                event = parse_entry(fields)
                assert isinstance(event, StatusEvent)
                if event.state == JobState.RUNNING:
                    running += 1
                    on_running(running)
                elif event.state.terminal:
                    done.add(event.job_id)


async def run_storm(  # noqa: PLR0917 - the storm's knobs
    redis_url: str,
    server: DevServer,
    blobs: Path,
    spawn: Callable[..., subprocess.Popen[bytes]],
    requests: list[TraceRequest],
    kills: int,
    seed: int,
    workers: int = 3,
    within: float = 300.0,
) -> StormReport:
    """Submit every request, run ``workers`` worker processes, SIGKILL one of them (seeded choice)
    each time the count of ``running`` events reaches one of ``kills`` seeded marks, restart it at
    once, and return when every job has a terminal event."""
    rng = random.Random(seed)
    env = worker_env(
        redis_url,
        server.url,
        blobs.as_uri(),
        TRACE_WORKER_WORKER_CONCURRENCY="2",
        TRACE_WORKER_MAX_DELIVERIES="50",
        TRACE_WORKER_FLIGHTSQL_CONCURRENCY="2",
    )
    redis = Redis.from_url(redis_url)
    report = StormReport(jobs=len(requests), kills=0, seconds=0.0)
    live: list[subprocess.Popen[bytes]] = []
    try:
        started = time.monotonic()
        for request in requests:
            await redis.xadd(KEYS.requests, {"request": request.to_json()})
        for _ in range(workers):
            live.append(spawn(env, "storm"))
            report.workers_started += 1
        # Kill marks spread over the first runs (all before the last job can start).
        marks = sorted(rng.sample(range(2, max(3, len(requests))), k=min(kills, max(1, len(requests) - 2))))

        def on_running(count: int) -> None:
            while marks and count >= marks[0]:
                marks.pop(0)
                victim = live.pop(rng.randrange(len(live)))
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                report.kills += 1
                live.append(spawn(env, "storm"))
                report.workers_started += 1

        await _events_until_done(redis, {r.effective_job_id() for r in requests}, on_running, within)
        report.seconds = time.monotonic() - started
    finally:
        await redis.aclose()
    return report


async def reference_traces(server: DevServer, requests: list[TraceRequest]) -> dict[str, bytes]:
    """Each request's trace from ``generate_trace`` run directly against the same server
    (cached by what the trace depends on, so repeated shapes are generated once)."""
    settings = Settings(_env_file=None, flightsql_url=server.url, chunk_size=CHUNK_SIZE)
    source = FlightSqlSource(FlightSqlConfig.from_settings(settings))
    cache: dict[tuple[object, ...], bytes] = {}
    out: dict[str, bytes] = {}
    try:
        for request in requests:
            shape = (request.process_id, request.begin, request.end, request.span_types)
            if shape not in cache:
                parts = [c async for c in generate_trace(source, spec_for(request, settings))]
                cache[shape] = b"".join(parts)
            out[request.effective_job_id()] = cache[shape]
    finally:
        await source.aclose()
    return out


async def verify_storm(
    redis_url: str, blobs: Path, requests: list[TraceRequest], report: StormReport
) -> None:
    """Every invariant of the storm (module docstring), with the reference traces of the requests."""
    redis = Redis.from_url(redis_url)
    try:
        events: Any = await redis.xrange(KEYS.events)
        terminal_events = Counter(
            e.job_id
            for e in (parse_entry(fields) for _, fields in events)
            if isinstance(e, StatusEvent) and e.state.terminal
        )
        for request in requests:
            job_id = request.effective_job_id()
            assert terminal_events[job_id] == 1, (job_id, terminal_events[job_id])
            entries: Any = await redis.xrange(KEYS.job(job_id))
            stream = [parse_entry(fields) for _, fields in entries]
            terminal = [e for e in stream if isinstance(e, StatusEvent) and e.state.terminal]
            assert len(terminal) == 1, (job_id, [(t.state, t.attempt) for t in terminal])
            final = terminal[0]
            assert final.state == JobState.SUCCEEDED, (job_id, final.state, final.message)
            report.attempts[final.attempt] += 1
            chunks = sorted(
                (e for e in stream if isinstance(e, ChunkEvent) and e.attempt == final.attempt),
                key=lambda c: c.seq,
            )
            blob = (blobs / blob_key(request, job_id)).read_bytes()
            assert hashlib.sha256(blob).hexdigest() == final.sha256 and len(blob) == final.size
            if request.chunks:
                assert [c.seq for c in chunks] == list(range(len(chunks))), job_id
                assert chunks[-1].last and not any(c.last for c in chunks[:-1]), job_id
                assert b"".join(c.data for c in chunks) == blob, job_id
            else:
                assert not chunks, job_id
            state: Any = await redis.hget(KEYS.state(job_id), "state")
            assert state == b"succeeded", (job_id, state)
        pending: Any = await redis.xpending(KEYS.requests, KEYS.group)
        assert pending["pending"] == 0, pending
        assert not await redis.exists(*(KEYS.lock(r.effective_job_id()) for r in requests))
    finally:
        await redis.aclose()
    check_blob_folder(blobs, {blob_key(r, r.effective_job_id()) for r in requests})


def check_blob_folder(blobs: Path, expected: set[str]) -> None:
    """Exactly the expected traces, and no staged or temporary file, under ``blobs``."""
    traces = {str(p.relative_to(blobs)) for p in blobs.rglob("*.pftrace")}
    assert traces == expected, sorted(traces ^ expected)[:10]  # no orphan objects
    # A worker SIGKILLed between writing and deleting its store probe leaves that 5-byte `.readyz-*`
    # object (docs/DEPLOYMENT.md); it is never read as a trace. Anything else is a leftover.
    leftovers = sorted(
        name for p in blob_leftovers(blobs) if not (name := str(p.relative_to(blobs))).startswith(".readyz-")
    )
    assert not leftovers, leftovers
