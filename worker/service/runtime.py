"""What every part of the service shares: settings, key names, the Redis client, the generator,
the blob store, metrics, and the running-job bookkeeping used for concurrency and shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis

from contracts.keys import Keys
from worker.service.metrics import Metrics
from worker.service.ports import BlobStoreLike, TraceGenerator
from worker.settings import Settings

__all__ = ["Runtime"]

T = TypeVar("T")


@dataclass
class Runtime:
    """Shared state of one worker process."""

    settings: Settings
    redis: Redis
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

    def __post_init__(self) -> None:
        if not self.consumer:
            self.consumer = self.settings.consumer_name

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
