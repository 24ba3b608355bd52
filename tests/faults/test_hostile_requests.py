"""A hostile requester, with the ACL docs/SECURITY.md recommends, on the test's own redis-server.

Each test makes the attacker's exact move (issue 21) against a worker running in this process
(real Redis, scripted generator) and asserts that every entry is answered: dead-lettered within
``max_deliveries`` whatever it or the job's keys hold, with a bounded dead-letter entry, and that
the recovery of a real job never waits behind poison.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, Keys, TraceRequest
from tests.cli.test_client_commands import cli
from tests.service.support import PID, JobReader, ScriptedGenerator, fast_settings, submit, wait_until
from tests.support.redis_server import RedisServer
from worker.errors import BadSourceData
from worker.service.app import Service, ensure_group
from worker.service.job import MAX_MESSAGE
from worker.service.middleware.dead_letter import DEAD_ORIG_BYTES_MAX
from worker.sinks.blob.memory import MemoryBlobStore

KEYS = Keys("t")
#: A requester as docs/SECURITY.md recommends, for prefix ``t``: it may XADD to the request stream
#: and read the rest of the prefix (what every recommended ACL grants; no more is needed here).
REQUESTER_KEYS = ["~t:requests", "%R~t:*"]
REQUESTER_COMMANDS = ["+xadd", "+xread", "+xrange", "+hgetall"]
DEEP = "[" * 3000


@pytest.fixture
async def requester(redis_server: RedisServer, redis: Redis) -> AsyncIterator[Redis]:
    """A client logged in as the ACL-limited requester."""
    await redis.acl_setuser(
        "requester", enabled=True, reset=True, passwords=["+requester-pw"], keys=REQUESTER_KEYS,
        commands=REQUESTER_COMMANDS,
    )  # fmt: skip
    client = Redis.from_url(redis_server.url, username="requester", password="requester-pw")
    try:
        yield client
    finally:
        await client.aclose()


def _service(url: str, gen: ScriptedGenerator, **overrides: Any) -> Service:
    return Service(fast_settings(url, **overrides), generator=gen, store=MemoryBlobStore())


async def _pending(redis: Redis) -> int:
    summary: Any = await redis.xpending(KEYS.requests, KEYS.group)
    return int(summary["pending"])


async def _dead(redis: Redis) -> dict[str, dict[bytes, bytes]]:
    rows: Any = await redis.xrange(KEYS.dead)
    return {fields[b"entry_id"].decode(): fields for _, fields in rows}


async def test_poison_entries_end_dead_lettered_at_once(
    redis_server: RedisServer, redis: Redis, requester: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="worker")
    # A stream where the victim's state hash goes: the lease script fails WRONGTYPE on it.
    await redis.xadd(KEYS.state("victim"), {"x": "1"})
    moves: dict[str, dict[str, Any]] = {
        "deep": {"request": DEEP},
        "deep-labels": {"request": '{"job_id": "deep-labels", "labels": ' + DEEP + "}"},
        "wrongtype": {"request": TraceRequest(process_id=PID, job_id="victim").to_json()},
        "huge-extra": {
            "request": "{}",
            "x" * 300: b"y" * (4 * 1024 * 1024),
            **{f"f{i}": "z" for i in range(40)},
        },
    }
    entries = {name: await submit(requester, KEYS, fields) for name, fields in moves.items()}
    gen = ScriptedGenerator(chunks=2)
    service = _service(redis_server.url, gen, max_deliveries=5)
    await service.start()
    try:
        await submit(requester, KEYS, TraceRequest(process_id=PID, job_id="good-after"))
        final = await JobReader(redis, KEYS, "good-after").terminal()
        assert final.state == JobState.SUCCEEDED
        await wait_until(lambda: _pending_is_zero(redis), what="every entry answered")
    finally:
        await service.stop()
    dead = await _dead(redis)
    assert set(dead) == set(entries.values())
    for fields in dead.values():
        assert int(fields[b"deliveries"]) <= 5
    wrongtype = dead[entries["wrongtype"]]
    assert wrongtype[b"error_code"] == ErrorCode.INTERNAL.value.encode()
    assert b"WRONGTYPE" in wrongtype[b"reason"] and wrongtype[b"job_id"] == b"victim"
    assert dead[entries["deep"]][b"error_code"] == ErrorCode.INVALID_REQUEST.value.encode()
    # Too deep to parse even for its job id: the dead letter is its only answer.
    assert b"job_id" not in dead[entries["deep-labels"]]
    # The dead letter of a 4 MiB entry is bounded, and says what it dropped.
    huge = dead[entries["huge-extra"]]
    orig = sum(len(k) + len(v) for k, v in huge.items() if k.startswith(b"orig:"))
    assert orig <= DEAD_ORIG_BYTES_MAX + 16 * 70
    assert len(huge) <= 32 and b"4194304" in huge[b"truncated"]
    assert await redis.xlen(KEYS.requests) == 0  # answered entries are deleted
    # Bounded logging: one line per entry, at most one traceback.
    assert sum(1 for r in caplog.records if r.exc_info) <= 1
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)


async def _pending_is_zero(redis: Redis) -> bool:
    return await _pending(redis) == 0


async def test_crash_recovery_does_not_wait_behind_poison(
    redis_server: RedisServer, redis: Redis, requester: Redis
) -> None:
    """2,100 poison entries stranded ahead of a real job in a dead consumer's pending list (more
    than one pass of the reclaimer looks at): the real job is still taken over and finished."""
    await ensure_group(redis, KEYS.requests, KEYS.group)
    await redis.xadd(KEYS.state("victim"), {"x": "1"})
    victim = TraceRequest(process_id=PID, job_id="victim").to_json()
    async with requester.pipeline(transaction=False) as pipe:
        for i in range(2100):
            pipe.xadd(KEYS.requests, {"request": DEEP if i % 2 else victim})
        await pipe.execute()
    real = TraceRequest(process_id=PID, job_id="real-job")
    await submit(requester, KEYS, real)
    got: Any = await redis.xreadgroup(KEYS.group, "ghost", {KEYS.requests: ">"}, count=5000)
    assert len(got[0][1]) == 2101 and await _pending(redis) == 2101  # all held by a dead consumer
    gen = ScriptedGenerator(chunks=2)
    service = _service(redis_server.url, gen, max_deliveries=5)
    await service.start()
    try:
        final = await JobReader(redis, KEYS, "real-job").terminal(within=120)
        assert final.state == JobState.SUCCEEDED and final.attempt == 1
        await wait_until(lambda: _pending_is_zero(redis), within=120, what="every poison entry answered")
    finally:
        await service.stop()
    assert await redis.xlen(KEYS.dead) == 2100
    assert gen.calls == 1


ESCAPES = {"cls": "\x1b[2J", "title": "\x1b]0;pwned\x07", "rlo": "evil\u202etxt.exe", "csi": "\u009b2J"}


def test_labels_refuse_controls_and_bidi_overrides() -> None:
    for value in ESCAPES.values():
        with pytest.raises(ValueError, match="printable"):
            TraceRequest(process_id=PID, labels={"k": value})
    with pytest.raises(ValueError, match="label keys"):
        TraceRequest(process_id=PID, labels={"k\n": "v"})
    assert TraceRequest(process_id=PID, labels={"team": "näive ☃ 東京"}).labels["team"] == "näive ☃ 東京"


async def test_escape_sequences_reach_no_status_and_no_terminal(
    redis_server: RedisServer, redis: Redis, requester: Redis, tmp_path: Path
) -> None:
    """An invalid request's labels are echoed only when valid; what the CLI prints is escaped."""
    bad = {"job_id": "term-inj", "labels": {**ESCAPES, "ok": "fine"}}  # no process_id: invalid
    gen = ScriptedGenerator()
    service = _service(redis_server.url, gen)
    await service.start()
    try:
        await submit(requester, KEYS, json.dumps(bad))
        final = await JobReader(redis, KEYS, "term-inj").terminal()
    finally:
        await service.stop()
    assert final.state == JobState.FAILED and final.labels == {"ok": "fine"}
    # Whatever a status holds (here written straight into the state hash), the CLI escapes it.
    await redis.hset(KEYS.state("term-inj"), mapping={"message": "boom" + "".join(ESCAPES.values())})
    for args in (["status", "term-inj"], ["jobs"]):
        result = await cli(*args, cwd=tmp_path, redis_url=redis_server.url)
        shown = result.out + result.err
        assert not any(ch in shown for ch in "\x1b\x07\u202e\u009b"), shown
    status = await cli("status", "term-inj", cwd=tmp_path, redis_url=redis_server.url)
    assert "boom\\x1b[2J" in status.out and "\\u202e" in status.out


async def test_a_huge_source_error_message_is_cut(redis_server: RedisServer, redis: Redis) -> None:
    """A hostile service's 1 MB error text must not be copied into the job stream, the state hash
    and every entry of the events stream."""
    gen = ScriptedGenerator(fail_first=[BadSourceData("x" * 1_000_000)])
    service = _service(redis_server.url, gen)
    await service.start()
    try:
        await submit(redis, KEYS, TraceRequest(process_id=PID, job_id="loud"))
        final = await JobReader(redis, KEYS, "loud").terminal()
    finally:
        await service.stop()
    assert final.error_code == ErrorCode.BAD_SOURCE_DATA
    assert final.message is not None and len(final.message) <= MAX_MESSAGE
    usage: Any = await redis.memory_usage(KEYS.events, samples=0)
    assert int(usage) < 64 * 1024
