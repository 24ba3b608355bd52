"""The heartbeat's renewal and the move to a new attempt share the lease's lock: a renewal sent with
the old attempt's value while the move is in flight must not read as a lost lease (it stopped a
retried job as "another worker has the job", CI under load, 2026-11-30)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from redis.asyncio import Redis

from contracts import Keys
from tests.support.redis_server import RedisServer
from worker.service.lease import Lease

KEYS = Keys("t")


async def _held_lease(redis: Redis) -> Lease:
    rt = SimpleNamespace(redis=redis, keys=KEYS, consumer="c1", settings=SimpleNamespace(lease_s=30.0))
    lease = Lease(cast(Any, rt), "job", "1-0")
    await redis.xgroup_create(KEYS.requests, KEYS.group, id="0", mkstream=True)
    # Attempt 1 held, as the pickup's script leaves it.
    lease.attempt, lease.value = 1, f"{lease.owner}/1"
    await redis.set(lease.lock_key, lease.value, px=30_000)
    await redis.hset(lease.state_key, "attempt", 1)
    return lease


async def test_renewal_in_flight_across_an_attempt_change_keeps_the_lease(
    redis_server: RedisServer, redis: Redis
) -> None:
    lease = await _held_lease(redis)
    # Both scripts are sent before either answers: the renewal carries attempt 1's value and runs
    # after the move to attempt 2.
    attempt, renewed = await asyncio.gather(lease.next_attempt(), lease.renew())
    assert attempt == 2
    assert renewed
    assert await redis.get(lease.lock_key) == f"{lease.owner}/2".encode()
    assert await redis.pttl(lease.lock_key) > 20_000


async def test_renewal_of_a_lease_taken_by_another_worker_fails(
    redis_server: RedisServer, redis: Redis
) -> None:
    lease = await _held_lease(redis)
    await redis.set(lease.lock_key, "c2/1-0/2", px=30_000)
    assert not await lease.renew()
    assert await redis.get(lease.lock_key) == b"c2/1-0/2"
