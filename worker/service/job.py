"""One delivery of a valid request: take the job's lease, run attempts, end with one terminal status.

Each attempt starts with ``status running`` carrying its number, streams the trace to the blob
writer and (unless ``chunks`` is false) to chunk entries, then commits the blob and finishes
``succeeded``. A transient failure ends the attempt and, after an exponential backoff, starts the
next one (a new number, so readers drop the failed attempt's chunks); permanent failures, the job
timeout and unexpected exceptions end the job ``failed``. When no request wants the job any more
(every attached request was cancelled: :mod:`worker.service.cancels`) it ends ``cancelled``. A lost
lease stops the attempt at once and writes nothing: the job belongs to another worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Literal

from contracts.errors import ErrorCode
from contracts.events import StatusEvent
from contracts.request import TraceRequest
from contracts.states import JobState
from worker.errors import PermanentError, RetryableError, TraceWorkerError
from worker.service.answers import answer
from worker.service.emit import Emitter
from worker.service.finish import finish, mark_running, reply_duplicate
from worker.service.lease import Claim, Lease
from worker.service.logs import JobLog
from worker.service.ports import BlobWriterLike, StopRequested
from worker.service.progress import ProgressPump
from worker.service.redis_io import TRANSIENT, retry_redis
from worker.service.runtime import Runtime
from worker.sinks.reply_stream import ReplyStream

__all__ = ["blob_key", "run_job"]

log = logging.getLogger("worker.service.job")

#: How often a running job looks whether any request still wants it (cancels detach requests).
CANCEL_POLL_S = 0.2
#: Longest `message` of a failed status (characters); longer ones are cut.
MAX_MESSAGE = 2048
#: How long a cancelled job's generator may take to notice ``should_stop`` before it is cancelled.
CANCEL_GRACE_S = 2.0


def blob_key(request: TraceRequest, job_id: str) -> str:
    """Deterministic object key: a retry or another worker overwrites the same object."""
    return f"{request.process_id}/{job_id}.pftrace"


async def run_job(rt: Runtime, entry_id: str, request: TraceRequest) -> None:
    """Work on one delivered request entry until its job ends, is a duplicate, or the lease is lost.

    The request is answered ``queued`` at once (the pickup acknowledgement), then ``running``
    (it started the job, or joined the running one), a duplicate's ``succeeded``, or a refusal.
    """
    job_id = request.effective_job_id()
    jlog = JobLog(log, {"job_id": job_id, "entry_id": entry_id})
    lease = Lease(rt, job_id, entry_id)

    def mine(state: JobState, **fields: object) -> StatusEvent:
        return StatusEvent.model_validate(
            {"job_id": job_id, "state": state, "labels": request.labels, "request_id": entry_id, **fields}
        )

    await answer(rt, mine(JobState.QUEUED, detail=f"picked up by {rt.consumer}"))

    async def begin() -> Claim:
        return await lease.begin(
            labels_json=json.dumps(request.labels, sort_keys=True),
            fingerprint=request.fingerprint(),
            max_age_s=request.effective_max_age_s,
        )

    claim = await retry_redis(begin, what="lease", give_up_after_s=rt.settings.lease_s)
    if claim.kind == "locked" and claim.holder_entry == entry_id:
        jlog.info("entry is held by a live lease (%s); leaving it to its holder", claim.holder)
        return
    if claim.kind == "cancelled":
        jlog.info("request cancelled before pickup")
        await answer(rt, mine(JobState.CANCELLED, detail="cancelled on request before a worker started it"),
                     ack=entry_id)  # fmt: skip
        return
    if claim.kind == "conflict":
        jlog.info("job id taken by a different request (%s)", claim.holder)
        message = (
            f"job id {job_id} belongs to a different request (the job is {claim.holder}); a job id "
            "names one request (process, range, span types, chunks): choose another job id"
        )
        code = ErrorCode.JOB_ID_CONFLICT
        await answer(
            rt, mine(JobState.FAILED, error_code=code, message=message, retryable=False), ack=entry_id
        )
        return
    if claim.kind != "go":
        rt.metrics.duplicates.inc()
        jlog.info("duplicate request (%s)", claim.kind)
        await reply_duplicate(rt, entry_id, job_id, request.labels, claim.kind)
        return
    await _Job(rt, request, job_id, entry_id, lease).run()


class _JobTimeout(Exception):
    """The attempt ran longer than job_timeout_s."""


@dataclass
class _Transient:
    """An attempt ended by a transient error; the status to publish if no retry is left."""

    status: StatusEvent


class _Job:
    def __init__(self, rt: Runtime, request: TraceRequest, job_id: str, entry_id: str, lease: Lease) -> None:
        self.rt = rt
        self.request = request
        self.job_id = job_id
        self.entry_id = entry_id
        self.lease = lease
        self.stop_reason: Literal["cancel", "lease"] | None = None
        self.stopped = asyncio.Event()
        self.current: asyncio.Task[StatusEvent] | None = None
        #: Job-stream id of the current attempt's running entry.
        self.start_id: str | None = None
        self.log = JobLog(log, {"job_id": job_id, "entry_id": entry_id, "attempt": lease.attempt})

    # -- the delivery
    async def run(self) -> None:
        watch = asyncio.create_task(self._watch())
        try:
            status = await self._attempts()
            written = status is not None and await finish(
                self.rt, entry_id=self.entry_id, status=status, lock_value=self.lease.value
            )
            if status is not None and written:
                self.rt.metrics.jobs.labels(status.state.value).inc()
                self.log.info("job %s", status.state.value)
            else:
                self.rt.metrics.lease_losses.inc()
                self.log.warning("lease lost; another worker has the job, stopping without a status")
        except asyncio.CancelledError:
            # Shutdown past the drain timeout: leave the entry pending, free the job for a reclaimer.
            await self.rt.shielded(self._release())
            raise
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _attempts(self) -> StatusEvent | None:
        """Attempts until one ends the job (transient failures retried with backoff, each as a new
        attempt); the terminal status, or None when the lease was lost."""
        settings = self.rt.settings
        delay = settings.retry_backoff_s
        for retry in range(settings.retry_max + 1):
            outcome = await self._attempt()
            if not isinstance(outcome, _Transient):
                return outcome
            if retry == settings.retry_max:
                return outcome.status
            self.rt.metrics.retries.inc()
            self.log.warning(
                "transient failure (%s); retry %d in %.1fs", outcome.status.message, retry + 1, delay
            )
            if await self._sleep_unless_stopped(delay):
                return await self._stopped_outcome()
            attempt = await retry_redis(self.lease.next_attempt, what="next attempt")
            if attempt is None:
                return None
            self.log.extra = {**(self.log.extra or {}), "attempt": attempt}
            delay = min(delay * 2, settings.retry_backoff_max_s)
        raise AssertionError("unreachable: the last retry returns")

    async def _release(self) -> None:
        try:
            await self.lease.release()
            self.log.info("released for reclaim")
        except TRANSIENT:
            self.log.warning("could not release the lease; it expires by itself")

    async def _sleep_unless_stopped(self, delay: float) -> bool:
        try:
            async with asyncio.timeout(delay):
                await self.stopped.wait()
        except TimeoutError:
            return False
        return True

    async def _stopped_outcome(self) -> StatusEvent | None:
        if self.stop_reason == "lease":
            return None
        return self._status(JobState.CANCELLED, detail="cancelled on request")

    # -- watchers
    def _stop(self, reason: Literal["cancel", "lease"]) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stopped.set()
            if reason == "lease":
                self._force_stop()  # at once: the job is someone else's
            else:
                # The generator stops at its next batch; one stuck in a query is stopped anyway.
                asyncio.get_running_loop().call_later(CANCEL_GRACE_S, self._force_stop)

    def _force_stop(self) -> None:
        if self.current is not None and not self.current.done():
            self.current.cancel()

    async def _watch(self) -> None:
        """Heartbeat (lease renewal) and polling whether any request still wants the job (a cancel
        detaches requests; the job stops when none is left)."""
        settings = self.rt.settings
        next_beat = time.monotonic() + settings.heartbeat_s
        while True:
            await asyncio.sleep(min(CANCEL_POLL_S, settings.heartbeat_s))
            try:
                if self.stop_reason is None and not await self.lease.wanted():
                    self.log.info("cancelled: no request wants the job any more")
                    self._stop("cancel")
                if time.monotonic() >= next_beat:
                    if not await self.lease.renew():
                        self._stop("lease")
                        return
                    next_beat = time.monotonic() + settings.heartbeat_s
            except TRANSIENT as exc:
                self.log.warning("heartbeat: redis unavailable (%s)", exc)

    async def _should_stop(self) -> bool:
        return self.stop_reason is not None

    # -- one attempt
    def _status(self, state: JobState, **fields: object) -> StatusEvent:
        return StatusEvent.model_validate(
            {
                "job_id": self.job_id,
                "attempt": self.lease.attempt,
                "state": state,
                "labels": self.request.labels,
                "request_id": self.entry_id,
                **fields,
            }
        )

    def _failed(self, code: ErrorCode, message: str) -> StatusEvent:
        # Messages may quote the Flight SQL service or the blob store: bounded, as every entry is.
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        return self._status(JobState.FAILED, error_code=code, message=message, retryable=code.retryable)

    async def _attempt(self) -> StatusEvent | _Transient | None:
        """Run one attempt; the terminal status, a transient failure, or None when the lease was lost."""
        rt = self.rt
        started = time.monotonic()
        try:
            running = self._status(
                JobState.RUNNING, lease_s=rt.settings.lease_s, heartbeat_s=rt.settings.heartbeat_s
            )
            self.start_id = await mark_running(rt, running)
        except TRANSIENT as exc:
            return _Transient(self._failed(ErrorCode.INTERNAL, f"redis unavailable: {exc}"))
        rt.metrics.attempts.inc()
        if self.stop_reason is not None:
            return await self._stopped_outcome()
        self.current = asyncio.create_task(self._produce(started))
        status: StatusEvent | None
        try:
            status = await self.current
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stop_reason is None or (task is not None and task.cancelling()):
                raise
            status = await self._stopped_outcome()  # the watcher stopped the attempt
        except StopRequested:
            status = await self._stopped_outcome()
        except PermanentError as exc:
            status = self._failed(exc.code, str(exc) or exc.code.value)
        except RetryableError as exc:
            return _Transient(self._failed(exc.code, str(exc) or exc.code.value))
        except _JobTimeout:
            status = self._failed(
                ErrorCode.TIMEOUT, f"the job ran longer than job_timeout_s={rt.settings.job_timeout_s:g}s"
            )
        except TRANSIENT as exc:
            return _Transient(self._failed(ErrorCode.INTERNAL, f"redis unavailable: {exc}"))
        except TraceWorkerError as exc:
            status = self._failed(exc.code, str(exc))
        except Exception as exc:
            rt.metrics.internal_errors.inc()
            self.log.exception("unexpected error")
            status = self._failed(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.current = None
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            # Shutdown cancelled us mid-command (redis-py may report that as a TimeoutError).
            raise asyncio.CancelledError
        if self.stop_reason == "lease":
            return None
        if self.stop_reason == "cancel" and status is not None and status.state != JobState.SUCCEEDED:
            status = self._status(JobState.CANCELLED, detail="cancelled on request")
        if status is not None:
            rt.metrics.job_duration.labels(status.state.value).observe(time.monotonic() - started)
        return status

    async def _produce(self, started: float) -> StatusEvent:
        """Generate, stream and store the trace; the succeeded status."""
        rt, request = self.rt, self.request
        key = blob_key(request, self.job_id)
        writer = await rt.store.open_writer(key)
        committed = False
        reply = ReplyStream(rt.redis, rt.keys, self.job_id, self.lease.attempt, transaction=rt.transaction)
        pump = ProgressPump(reply, self.job_id, self.lease.attempt, request.labels,
                            rt.settings.progress_interval_s)  # fmt: skip
        try:
            emitter = Emitter(writer, reply, chunks=request.chunks)
            try:
                try:
                    async with asyncio.timeout(rt.settings.job_timeout_s) as limit:
                        await self._stream(emitter, pump)
                except TimeoutError:
                    if limit.expired():
                        raise _JobTimeout from None
                    raise
            finally:
                await emitter.abort()
            await pump.close()
            info = await writer.commit()
            committed = True
            url = await rt.store.presign(key, rt.settings.blob_url_expires_s)
        finally:
            await pump.close()
            if not committed:
                await _abort(writer)
        duration = time.monotonic() - started
        spans = pump.spans
        rt.metrics.spans.inc(spans)
        rt.metrics.trace_bytes.inc(info.size)
        if duration > 0 and spans:
            rt.metrics.spans_per_second.observe(spans / duration)
        return self._status(
            JobState.SUCCEEDED,
            uri=info.uri,
            url=url,
            size=info.size,
            sha256=info.sha256,
            spans=spans,
            packets=pump.packets,
            chunks=reply.seq if request.chunks else 0,
            duration_s=round(duration, 6),
            start_id=self.start_id,
            begin_ns=pump.begin_ns,
            end_ns=pump.end_ns,
        )

    async def _stream(self, emitter: Emitter, pump: ProgressPump) -> None:
        """Generator → emitter. The first chunk goes out at once (time to first byte); later ones
        wait for their successor so that the final one can carry last=true. A trace of one chunk
        ends with an empty last chunk."""
        prev: bytes | None = None
        first = True
        async for chunk in self.rt.generator.generate(
            self.request, on_progress=pump.update, should_stop=self._should_stop
        ):
            if self.stop_reason is not None:
                raise StopRequested
            if first:
                await emitter.put(chunk, last=False)
                first = False
                continue
            if prev is not None:
                await emitter.put(prev, last=False)
            prev = chunk
        if self.stop_reason is not None:
            raise StopRequested
        if not first:
            await emitter.put(prev or b"", last=True)
        await emitter.close()


async def _abort(writer: BlobWriterLike) -> None:
    try:
        await asyncio.shield(asyncio.ensure_future(writer.abort()))
    except Exception:
        log.warning("blob abort failed", exc_info=True)
