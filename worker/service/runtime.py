"""What every part of the service shares: settings, key names, the Redis client (one server or a
cluster), the generator, the blob store, metrics, and the running-job bookkeeping used for
concurrency and shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from contracts.keys import Keys
from worker.service.metrics import Metrics
from worker.service.ports import BlobStoreLike, TraceGenerator
from worker.service.redis_io import RedisLike, SlotClients, Write, write
from worker.settings import Settings

__all__ = ["Runtime"]

T = TypeVar("T")


@dataclass
class Runtime:
    """Shared state of one worker process."""

    settings: Settings
    #: ``redis.asyncio.Redis``, or ``RedisCluster`` with TRACE_WORKER_REDIS_CLUSTER.
    redis: RedisLike
    generator: TraceGenerator
    store: BlobStoreLike
    metrics: Metrics = field(default_factory=Metrics)
    #: Consumer name in the group (unique per process).
    consumer: str = ""
    #: Deliveries being worked on (both paths), by entry id.
    active: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    #: Set when the service stops taking new work.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Monotonic time of the last reclaim-loop pass (liveness).
    last_tick: float = field(default_factory=time.monotonic)
    #: Shielded writes still running (a cancelled job's terminal write or lease release); the
    #: service waits for them before closing its Redis client.
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    #: Whether the request subscriber still consumes (set by the app once it subscribed).
    consuming: Callable[[], bool] = lambda: True
    #: Set when the service cannot go on (the subscriber stopped): `trace-worker run` exits 1.
    fatal: asyncio.Event = field(default_factory=asyncio.Event)

    #: Per-master clients for transactions on one hash slot (cluster only; None on one Redis).
    slots: SlotClients | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.consumer:
            self.consumer = self.settings.consumer_name
        if isinstance(self.redis, RedisCluster):
            self.slots = SlotClients(self.redis)

    @property
    def cluster(self) -> bool:
        """Whether Redis is a Redis Cluster."""
        return self.slots is not None

    def transaction(self, key: str) -> AbstractAsyncContextManager[Pipeline]:
        """A MULTI/EXEC pipeline for commands on ``key``'s hash slot (every key it touches must
        share that slot: a job's keys, by their ``{<job_id>}`` tag)."""
        if self.slots is None:
            assert not isinstance(self.redis, RedisCluster)
            return self.redis.pipeline(transaction=True)
        return self.slots.pipeline(key)

    async def write(
        self, key: str, build: Callable[[Write], Awaitable[T]], *, what: str, give_up_after_s: float = 120.0
    ) -> T:
        """A :class:`~worker.service.redis_io.Write` on ``key``'s slot and the shared streams,
        retried through Redis blips (see :func:`worker.service.redis_io.write`)."""
        return await write(self.redis, self.slots, key, build, what=what, give_up_after_s=give_up_after_s)

    async def shielded(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion even if the caller is cancelled (the caller still sees the
        cancellation); :meth:`settle` waits for such writes at shutdown."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return await asyncio.shield(task)

    async def settle(self, within: float = 30.0) -> None:
        """Wait for shielded writes still running (bounded)."""
        if self.background:
            await asyncio.wait(set(self.background), timeout=within)

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.key_prefix)

    @property
    def free_slots(self) -> int:
        return max(0, self.settings.worker_concurrency - len(self.active))
