"""docs/PROTOCOL.md's requester ACL on a real redis-server: a requester can request, follow, download
and cancel, and cannot write any key the worker owns (the attacker's moves of issue 21 item 2); a
client refuses a result it cannot verify."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from contracts import JobState, Keys, StatusEvent, TraceRequest
from contracts.client import TraceClient, TraceIntegrityError
from contracts.events import CancelOutcome
from tests.service.support import PID, ScriptedGenerator, fast_settings
from tests.support.redis_server import RedisServer
from worker.service.app import Service
from worker.sinks.blob.memory import MemoryBlobStore

ROOT = Path(__file__).resolve().parents[2]
KEYS = Keys("t")


def documented_acl(prefix: str, password: str) -> list[str]:
    """The ACL SETUSER command exactly as docs/PROTOCOL.md gives it, for ``prefix``."""
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    match = re.search(r"\$ redis-cli (ACL SETUSER requester .*?)\n```", text, re.S)
    assert match is not None, "PROTOCOL.md lost its ACL example"
    command = (
        match.group(1).replace("\\\n", " ").replace("traces:", f"{prefix}:").replace("PASSWORD", password)
    )
    return shlex.split(command)


@pytest.fixture
async def requester_url(redis_server: RedisServer, redis: Redis) -> str:
    await redis.execute_command(*documented_acl("t", "s3cret"))  # type: ignore[no-untyped-call]
    return f"redis://requester:s3cret@127.0.0.1:{redis_server.port}/0"


async def test_a_requester_with_the_documented_acl_can_do_its_job_and_nothing_more(
    redis_server: RedisServer, redis: Redis, requester_url: str
) -> None:
    gen = ScriptedGenerator(chunks=3, gate=asyncio.Event())
    service = Service(fast_settings(redis_server.url), generator=gen, store=MemoryBlobStore())
    await service.start()
    attacker = Redis.from_url(requester_url)
    try:
        async with TraceClient(requester_url, "t", reconnect_timeout_s=20) as client:
            victim = await client.submit(TraceRequest(process_id=PID, job_id="victim"))
            async for event in victim.events():
                if isinstance(event, StatusEvent) and event.state == JobState.RUNNING:
                    break
            # the attacker's moves: every worker-owned key is read-only to a requester
            moves: list[tuple[Any, ...]] = [
                ("SET", KEYS.lock("victim"), "x"),
                ("DEL", KEYS.lock("victim")),
                ("XADD", KEYS.job("victim"), "*", "job_id", "victim", "attempt", "1", "type", "status",
                 "state", "succeeded", "url", "file:///etc/hostname"),
                ("XADD", KEYS.state("victim"), "*", "x", "y"),
                ("HSET", KEYS.state("victim"), "state", "succeeded"),
                ("XADD", KEYS.events, "*", "state", "succeeded"),
                ("HSET", KEYS.requesters("victim"), "1-1", "{}"),
                ("XTRIM", KEYS.requests, "MAXLEN", "0"),
                ("XREADGROUP", "GROUP", KEYS.group, "thief", "STREAMS", KEYS.requests, ">"),
            ]  # fmt: skip
            for move in moves:
                with pytest.raises(NoPermissionError):
                    await attacker.execute_command(*move)  # type: ignore[no-untyped-call]
            # ... while its own work goes through: a second request joins, cancels alone, the first succeeds
            joiner = await client.submit(TraceRequest(process_id=PID, job_id="victim", labels={"who": "j"}))
            async for event in joiner.events():
                if (
                    isinstance(event, StatusEvent)
                    and event.request_id == joiner.request_id
                    and event.state == "running"
                ):
                    break
            answer = await joiner.cancel()
            assert answer is not None and answer.outcome == CancelOutcome.DETACHED
            assert (await joiner.wait(30)).state == JobState.CANCELLED
            assert gen.gate is not None
            gen.gate.set()
            final = await victim.download(Path(redis_server.dir) / "out.pftrace", timeout=30)
            assert final.state == JobState.SUCCEEDED and final.sha256
            assert await attacker.hget(KEYS.state("victim"), "state") == b"succeeded"  # reads are allowed
    finally:
        await attacker.aclose()
        await service.stop()


async def test_a_client_refuses_a_result_it_cannot_verify(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    """Should a status be forged anyway (a requester with more rights than documented), the client
    neither reports it verified nor reads a local file it did not ask for."""
    secret = tmp_path / "private.txt"
    secret.write_bytes(b"not a trace")
    async with TraceClient(redis_server.url, "t", reconnect_timeout_s=20) as client:
        job = await client.submit(TraceRequest(process_id=PID, job_id="forged", chunks=False))
        for extra in ({}, {"size": "11", "sha256": "0" * 64}):
            fields: Any = {
                **StatusEvent(
                    job_id="forged",
                    attempt=1,
                    state=JobState.SUCCEEDED,
                    request_id=job.request_id,
                    uri=secret.as_uri(),
                    url=secret.as_uri(),
                ).to_fields(),
                **extra,
            }
            await redis.xadd(KEYS.job("forged"), fields)
            with pytest.raises(TraceIntegrityError):
                await job.download(tmp_path / "out.pftrace", timeout=10)
            assert not (tmp_path / "out.pftrace").exists()
