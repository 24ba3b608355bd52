"""Our own reclaim loop: entries stranded in a dead consumer's pending list are taken over.

FastStream's plain group subscriber reads only new entries, and its ``min_idle_time`` mode reads
nothing else (shared/reference/redis-faststream.md §1). This loop pages through XPENDING, picks
entries idle longer than the lease (a live worker's heartbeat keeps its entries fresh), XCLAIMs a
few at a time with the same min-idle (so two reclaimers cannot both win) and runs them through the
same dispatcher as new entries. XPENDING without IDLE and XCLAIM work on Redis >= 5.

Thousands of pending entries never starve recovery: each pass resumes the walk where the last one
stopped (wrapping round at the end), so every pending entry is looked at within
``pending / (_PAGE x _MAX_PAGES)`` passes; a pass stops as soon as the slots are full, and the next
one starts as soon as a reclaimed delivery ends (poison ends fast: it is dead-lettered at its first
failure) instead of after ``reclaim_interval_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from worker.service.delivery import Delivery, Dispatcher
from worker.service.inflight import sweep
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
        #: Where the next pass resumes its walk of the pending list ("-": from the start).
        self._cursor = "-"

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
            taken = 0
            try:
                taken = await self.pass_once()
            except TRANSIENT as exc:
                log.warning("reclaim: redis unavailable (%s)", exc)
            except Exception:
                rt.metrics.internal_errors.inc()
                log.exception("reclaim pass failed")
            await self._pause(taken)

    async def _pause(self, taken: int) -> None:
        """Until the next pass: ``reclaim_interval_s``, or less when a reclaimed delivery ends
        (there may be more stranded entries waiting for the slot it frees)."""
        rt = self._rt
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(rt.stopping.wait())}
        if taken and self.jobs:
            waits |= set(self.jobs)
        try:
            await asyncio.wait(
                waits, timeout=rt.settings.reclaim_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in waits:
                if fut not in self.jobs:
                    fut.cancel()

    async def pass_once(self) -> int:
        """One look at the pending list; returns how many entries were taken over."""
        rt = self._rt
        keys = rt.keys
        summary: Any = await rt.redis.xpending(keys.requests, keys.group)
        rt.metrics.pending.set(int(summary.get("pending", 0)))
        taken, oldest = 0, 0
        if int(summary.get("pending", 0)):
            first: Any = await rt.redis.xpending_range(keys.requests, keys.group, min="-", max="+", count=1)
            oldest = int(first[0]["time_since_delivered"]) if first else 0
        start = self._cursor
        for _ in range(_MAX_PAGES):
            if rt.free_slots == 0 or rt.stopping.is_set():
                break
            rows: Any = await rt.redis.xpending_range(
                keys.requests, keys.group, min=start, max="+", count=_PAGE
            )
            if not rows:
                start = "-"  # the end of the list: the next page starts again from the oldest
                break
            full = False
            for row in rows:
                if rt.free_slots == 0 or rt.stopping.is_set():
                    full = True  # resume at this row next pass
                    break
                entry_id = _text(row["message_id"])
                start = "(" + entry_id
                idle = int(row["time_since_delivered"])
                oldest = max(oldest, idle)
                if idle < self.min_idle_ms or entry_id in rt.active:
                    continue
                claimed: Any = await rt.redis.xclaim(
                    keys.requests, keys.group, rt.consumer, self.min_idle_ms, [entry_id]
                )
                if not claimed:
                    continue  # someone else was faster, or a heartbeat refreshed it
                cid, fields = claimed[0]
                taken += 1
                self._spawn(Delivery(entry_id=_text(cid), fields=dict(fields or {}), path="reclaimed"))
            if full:
                break
            if len(rows) < _PAGE:
                start = "-"
                break
        self._cursor = start
        rt.metrics.lag.set(oldest / 1000)
        # Entries deleted while their worker was dead (XCLAIM drops them silently): end their jobs.
        await sweep(rt)
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
