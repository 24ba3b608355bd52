"""Our own reclaim loop: entries stranded in a dead consumer's pending list are taken over.

FastStream's plain group subscriber reads only new entries, and its ``min_idle_time`` mode reads
nothing else (shared/reference/redis-faststream.md §1). This loop pages through XPENDING, picks
entries idle longer than the lease (a live worker's heartbeat keeps its entries fresh), XCLAIMs a
few at a time with the same min-idle (so two reclaimers cannot both win) and runs them through the
same dispatcher as new entries. XPENDING without IDLE and XCLAIM work on Redis >= 5.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from worker.service.delivery import Delivery, Dispatcher
from worker.service.redis_io import TRANSIENT
from worker.service.runtime import Runtime

__all__ = ["Reclaimer"]

log = logging.getLogger("worker.service.reclaim")

_PAGE = 100
_MAX_PAGES = 20


class Reclaimer:
    """Runs the reclaim loop as a task; reclaimed deliveries run as tasks tracked in ``rt.active``."""

    def __init__(self, rt: Runtime, dispatcher: Dispatcher) -> None:
        self._rt = rt
        self._dispatcher = dispatcher
        self._task: asyncio.Task[None] | None = None
        self.jobs: set[asyncio.Task[None]] = set()

    @property
    def min_idle_ms(self) -> int:
        """Idle time after which an entry counts as stranded: a little over the lease, so the
        dead holder's lock has expired by the time its entry is claimed."""
        lease_ms = int(self._rt.settings.lease_s * 1000)
        return lease_ms + max(200, lease_ms // 10)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="reclaim")

    async def stop(self) -> None:
        """Stop looking for stranded entries (running reclaimed jobs continue)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        rt = self._rt
        while not rt.stopping.is_set():
            rt.last_tick = time.monotonic()
            if not rt.consuming():
                # FastStream stopped the subscriber for good (e.g. NOGROUP after a FLUSHALL); a
                # restart recreates the group.
                log.critical("the request subscriber stopped consuming; exiting for a restart")
                rt.fatal.set()
                return
            try:
                await self.pass_once()
            except TRANSIENT as exc:
                log.warning("reclaim: redis unavailable (%s)", exc)
            except Exception:
                rt.metrics.internal_errors.inc()
                log.exception("reclaim pass failed")
            try:
                async with asyncio.timeout(rt.settings.reclaim_interval_s):
                    await rt.stopping.wait()
            except TimeoutError:
                pass

    async def pass_once(self) -> int:
        """One look at the pending list; returns how many entries were taken over."""
        rt = self._rt
        keys = rt.keys
        summary: Any = await rt.redis.xpending(keys.requests, keys.group)
        rt.metrics.pending.set(int(summary.get("pending", 0)))
        start, taken, oldest = "-", 0, 0
        for _ in range(_MAX_PAGES):
            rows: Any = await rt.redis.xpending_range(
                keys.requests, keys.group, min=start, max="+", count=_PAGE
            )
            if not rows:
                break
            for row in rows:
                idle = int(row["time_since_delivered"])
                oldest = max(oldest, idle)
                if idle < self.min_idle_ms or rt.free_slots == 0 or rt.stopping.is_set():
                    continue
                entry_id = _text(row["message_id"])
                if entry_id in rt.active:
                    continue
                claimed: Any = await rt.redis.xclaim(
                    keys.requests, keys.group, rt.consumer, self.min_idle_ms, [entry_id]
                )
                if not claimed:
                    continue  # someone else was faster, or a heartbeat refreshed it
                cid, fields = claimed[0]
                taken += 1
                self._spawn(Delivery(entry_id=_text(cid), fields=dict(fields or {}), path="reclaimed"))
            if len(rows) < _PAGE:
                break
            start = "(" + _text(rows[-1]["message_id"])
        rt.metrics.lag.set(oldest / 1000)
        if taken:
            log.info("reclaimed %d stranded entr%s", taken, "y" if taken == 1 else "ies")
        return taken

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._dispatcher.handle(delivery), name=f"job {delivery.entry_id}")
        self._rt.active[delivery.entry_id] = task  # reserve the slot before the task runs
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
