"""Rate-limited progress entries: the generator reports as often as it likes, the job stream gets at
most one entry per ``progress_interval_s`` (the first one interval after the job started, so a
short job writes only its final one); a failing progress write never fails the job. The final
entry can be handed back instead of written (:meth:`ProgressPump.close` with ``publish=False``), so
that it goes in the same MULTI as the job's terminal status: one round trip less per job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from contracts.events import ProgressEvent, utcnow
from worker.service.ports import ProgressLike
from worker.sinks.reply_stream import ReplyStream

__all__ = ["ProgressPump"]

log = logging.getLogger("worker.service.progress")


class ProgressPump:
    """Collects the latest progress and publishes it in the background, at most every ``interval_s``."""

    def __init__(
        self, reply: ReplyStream, job_id: str, attempt: int, labels: dict[str, str], interval_s: float
    ) -> None:
        self._reply = reply
        self._job_id = job_id
        self._attempt = attempt
        self._interval = interval_s
        self._latest: ProgressLike | None = None
        self._sent: tuple[object, ...] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The first entry waits one interval too: a job shorter than that writes one progress entry
        # (the final one, at close) instead of two.
        self._last_sent = time.monotonic()
        self._closed = False
        #: Set by close(publish=False): the background task ends without writing the latest.
        self._hold = False
        self._closing = asyncio.Event()
        #: Totals of the latest report (for the final status).
        self.spans = 0
        self.packets: int | None = None
        #: The resolved range, when the generator reports it.
        self.begin_ns: int | None = None
        self.end_ns: int | None = None

    def update(self, progress: ProgressLike) -> None:
        """The generator's callback (synchronous, cheap)."""
        self._latest = progress
        self.spans = int(progress.spans)
        packets = getattr(progress, "packets", None)
        if isinstance(packets, int):
            self.packets = packets
        for name in ("begin_ns", "end_ns"):
            value = getattr(progress, name, None)
            if isinstance(value, int):
                setattr(self, name, value)
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        # Never cancelled mid-write: redis-py turns a cancelled command into a TimeoutError, which
        # would hide the cancellation. close() sets a flag and waits for the loop to end instead.
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            wait = self._last_sent + self._interval - time.monotonic()
            if wait > 0 and not self._closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._closing.wait()
            if self._closed and self._hold:
                return
            await self._publish()

    def _take(self) -> ProgressEvent | None:
        """The latest progress as an entry, unless it was already written (then None)."""
        p = self._latest
        if p is None:
            return None
        key = (p.phase, p.spans, p.bytes, p.threads_done, p.threads_total, p.percent)
        if key == self._sent:
            return None
        self._sent = key
        self._last_sent = time.monotonic()
        return ProgressEvent(
            job_id=self._job_id,
            attempt=self._attempt,
            phase=p.phase,
            spans=p.spans,
            bytes=p.bytes,
            threads_done=p.threads_done,
            threads_total=p.threads_total,
            percent=round(min(100.0, max(0.0, float(p.percent))), 2),
            time=utcnow(),
        )

    async def _publish(self) -> None:
        event = self._take()
        if event is None:
            return
        try:
            await self._reply.progress(event)
        except Exception as exc:  # an observer never fails the job
            log.debug("progress entry not written: %s", exc)

    async def close(self, *, publish: bool = True) -> ProgressEvent | None:
        """Stop the background task and publish the latest progress not yet written (idempotent).

        Args:
            publish: False: return that entry instead of writing it (None when there is none); the
                caller writes it (before the terminal status).
        """
        self._closed = True
        self._hold = self._hold or not publish
        self._closing.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return None if publish else self._take()
