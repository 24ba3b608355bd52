"""Any number of followers of one job in one client, joining at any time, each get every entry from
where they asked (issue 20 item 1): against real worker processes and a real redis-server, and a
scripted stream that makes joins land while a read is in flight."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path

from contracts import JobState, ProgressEvent, StatusEvent, TraceRequest
from contracts.client import TraceClient
from tests.client.helpers import Digest, blob_path, file_sha256
from tests.client.scripted import ScriptedWorker
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer


async def test_followers_joining_at_random_times_over_a_large_job_all_verify(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    spawn_worker(worker_env(redis_server.url, devserver.url, blobs.as_uri()))
    request = TraceRequest(process_id=devserver.lake.processes[1].process_id, job_id="crowd")
    await client.submit(request)
    rng = random.Random(20)

    async def follower(delay: float) -> tuple[Digest, StatusEvent]:
        await asyncio.sleep(delay)  # a join time, not a synchronisation: any time must work
        sink = Digest()
        status = await client.job("crowd").download(sink, timeout=300)
        return sink, status

    async def watcher(delay: float) -> list[StatusEvent | ProgressEvent]:
        await asyncio.sleep(delay)
        return [event async for event in client.job("crowd").events(timeout=300)]

    # While the job runs and after it ended: downloads of ~1,000 chunk entries each, joining while
    # the reader has reads in flight for the others.
    during = asyncio.gather(*(follower(rng.uniform(0, 3)) for _ in range(6)))
    watchers = asyncio.gather(*(watcher(rng.uniform(0, 3)) for _ in range(2)))
    downloads, seen = await asyncio.gather(during, watchers)
    later = await asyncio.gather(*(follower(rng.uniform(0, 0.5)) for _ in range(5)))

    blob_sha = file_sha256(blob_path(blobs, request))
    for sink, status in [*downloads, *later]:
        assert status.state == JobState.SUCCEEDED
        assert (sink.size, sink.sha256) == (status.size, blob_sha)
        assert (status.chunks or 0) > 100  # really many entries
    assert len(seen) == 2
    for events in seen:
        # from the start: the request's pickup ack, then the run
        states = [e.state for e in events if isinstance(e, StatusEvent)]
        assert states[:2] == [JobState.QUEUED, JobState.RUNNING], states
        assert isinstance(events[-1], StatusEvent) and events[-1].state == JobState.SUCCEEDED


async def test_two_sequential_events_calls_on_a_job_with_duplicates_yield_everything(
    client: TraceClient, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    spawn_worker(worker_env(redis_server.url, devserver.url, (tmp_path / "b").as_uri()))
    request = TraceRequest(process_id=devserver.lake.processes[0].process_id, job_id="dups")
    first = await client.submit(request)
    await first.wait(120)
    for _ in range(2):  # duplicates: the worker appends the job's state to its streams
        answer = await client.submit(request)
        await answer.wait(60)
    runs = []
    for _ in range(2):
        runs.append([event async for event in client.job("dups").events(timeout=60)])
    assert runs[0] == runs[1]
    states = [e.state for e in runs[0] if isinstance(e, StatusEvent)]
    assert states[:2] == [JobState.QUEUED, JobState.RUNNING], states  # pickup ack, then the run
    assert isinstance(runs[0][-1], StatusEvent) and runs[0][-1].state == JobState.SUCCEEDED
    assert any(isinstance(e, ProgressEvent) for e in runs[0])


async def test_many_joins_while_reads_are_in_flight(client: TraceClient, worker: ScriptedWorker) -> None:
    """Scripted: a finished job of 600 entries; new followers start from 0 at every 25th chunk one
    follower writes, i.e. while the reader has a read of the same stream in flight."""
    data = random.Random(1).randbytes(600_000)
    await worker.whole_job("busy", data, chunk_size=1000)
    joined: list[asyncio.Task[StatusEvent]] = []
    sinks: list[io.BytesIO] = []

    class Joiner(io.BytesIO):
        def write(self, piece: bytes, /) -> int:  # type: ignore[override]
            if len(joined) < 12 and self.tell() % 25_000 == 0:
                start(Joiner() if len(joined) % 2 else io.BytesIO())
            return super().write(piece)

    def start(sink: io.BytesIO) -> None:
        sinks.append(sink)
        joined.append(asyncio.create_task(client.job("busy").download(sink, timeout=60)))

    start(Joiner())
    while not all(t.done() for t in joined):  # joiners add tasks while we wait
        await asyncio.gather(*joined)
    assert len(joined) == 12
    assert all(sink.getvalue() == data for sink in sinks)
