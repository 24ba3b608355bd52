"""A delivered request entry, and the chain of small steps (middlewares) that handle it.

Both ways an entry reaches this worker (FastStream's XREADGROUP subscriber and the reclaim loop's
XCLAIM) end in :meth:`Dispatcher.handle`, so the delivery cap, input checks and metrics apply to
both. Onion order: metrics → dead letter (delivery cap) → decode → the job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.service.redis_io import retry_redis
from worker.service.runtime import Runtime

__all__ = ["Delivery", "Dispatcher", "FailureHandler", "Handler", "Middleware", "pending_info"]

log = logging.getLogger("worker.service")


@dataclass
class Delivery:
    """One request entry handed to this worker."""

    entry_id: str
    #: The entry's field map as Redis returned it (bytes keys and values).
    fields: dict[bytes, bytes]
    #: new: read from the group; reclaimed: taken over from another consumer.
    path: Literal["new", "reclaimed"] = "new"
    #: Times the entry has been delivered, this delivery included (from XPENDING).
    deliveries: int = 1
    #: Set by the decode step.
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[None]]
Middleware = Callable[[Delivery, Handler], Awaitable[None]]
#: Called with a delivery that raised unexpectedly (poison, or Redis down); must not raise on input.
FailureHandler = Callable[[Delivery, Exception], Awaitable[None]]


class Dispatcher:
    """Runs a delivery through the middlewares into the final handler; never raises on input."""

    def __init__(
        self,
        rt: Runtime,
        middlewares: Sequence[Middleware],
        final: Handler,
        on_failure: FailureHandler | None = None,
    ) -> None:
        self._rt = rt
        self._on_failure = on_failure
        chain: Handler = final
        for mw in reversed(middlewares):
            chain = _bind(mw, chain)
        self._chain = chain

    async def handle(self, delivery: Delivery) -> None:
        """Handle one delivery if this consumer still owns the entry."""
        rt = self._rt
        task = asyncio.current_task()
        assert task is not None
        rt.active[delivery.entry_id] = task
        try:
            owner, count = await retry_redis(
                lambda: pending_info(rt, delivery.entry_id),
                what="xpending",
                give_up_after_s=rt.settings.lease_s,
            )
            if owner != rt.consumer:
                log.info("entry %s is no longer ours (owner %s); skipping", delivery.entry_id, owner)
                return
            delivery.deliveries = count
            await self._chain(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Never crash the worker. Without a failure handler the entry stays pending and is
            # reclaimed (and dead-lettered once over the delivery cap).
            await self._failed(delivery, exc)
        finally:
            rt.active.pop(delivery.entry_id, None)

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        if self._on_failure is None:
            self._rt.metrics.internal_errors.inc()
            log.exception("delivery %s failed unexpectedly; left pending", delivery.entry_id)
            return
        try:
            await self._on_failure(delivery, exc)
        except asyncio.CancelledError:
            raise
        except Exception as again:
            log.error("delivery %s: failure handling failed too (%s: %s); left pending",
                      delivery.entry_id, type(again).__name__, str(again)[:200])  # fmt: skip


def _bind(mw: Middleware, nxt: Handler) -> Handler:
    async def call(d: Delivery) -> None:
        await mw(d, nxt)

    return call


async def pending_info(rt: Runtime, entry_id: str) -> tuple[str | None, int]:
    """The consumer holding a request entry and its delivery count; (None, 0) when not pending."""
    keys = rt.keys
    rows: Any = await rt.redis.xpending_range(keys.requests, keys.group, min=entry_id, max=entry_id, count=1)
    if not rows:
        return None, 0
    row = rows[0]
    owner = row["consumer"]
    return (owner.decode() if isinstance(owner, bytes) else owner), int(row["times_delivered"])
