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
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from contracts.errors import ErrorCode
from contracts.events import ChunkEvent, ProgressEvent, StatusEvent
from contracts.request import TraceRequest
from contracts.states import JobState
from worker.errors import BlobStoreRefused, PermanentError, RetryableError, TraceWorkerError
from worker.service.answers import answer, inflight_key, queue_answer
from worker.service.cancels import answer_held
from worker.service.emit import Emitter
from worker.service.finish import finish, mark_running, reply_duplicate
from worker.service.gzip_writer import GzipWriter
from worker.service.inflight import record
from worker.service.lease import Claim, Lease
from worker.service.logs import JobLog
from worker.service.ports import BlobWriterLike, StopRequested
from worker.service.progress import ProgressPump
from worker.service.redis_io import TRANSIENT, Write, retry_redis, write_shared
from worker.service.runtime import Runtime
from worker.sinks.reply_stream import LeaseLost, ReplyStream

__all__ = ["blob_key", "run_job"]

log = logging.getLogger("worker.service.job")

#: How often a running job looks whether any request still wants it (cancels detach requests).
CANCEL_POLL_S = 0.2
#: Longest `message` of a failed status (characters); longer ones are cut.
MAX_MESSAGE = 2048
#: How long a cancelled job's generator may take to notice ``should_stop`` before it is cancelled.
CANCEL_GRACE_S = 2.0
#: Bound of the blob store check before an attempt computes its trace.
STORE_CHECK_TIMEOUT_S = 10.0
#: A store that accepted a write this recently is not probed again (small jobs would pay two store
#: round trips each, which on S3 is most of their time).
STORE_CHECK_EVERY_S = 5.0
_store_ok_at: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()


def blob_key(request: TraceRequest, job_id: str, *, gzip: bool = False) -> str:
    """Deterministic object key: a retry or another worker overwrites the same object
    (``.pftrace.gz`` when the blob is gzip-compressed)."""
    return f"{request.process_id}/{job_id}.pftrace" + (".gz" if gzip else "")


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

    claim = await _pick_up(rt, request, lease, mine(JobState.QUEUED, detail=f"picked up by {rt.consumer}"))
    if claim.kind == "locked" and claim.holder_entry == entry_id:
        jlog.info("entry is held by a live lease (%s); leaving it to its holder", claim.holder)
        return
    if claim.kind == "cancelled":
        jlog.info("request cancelled before pickup")
        cancelled = mine(JobState.CANCELLED, detail="cancelled on request before a worker started it")
        await answer_held(rt, entry_id, cancelled, ends_job=claim.ends_job)
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
    await _Job(rt, request, job_id, entry_id, lease, start_id=claim.start_id).run()


async def _pick_up(rt: Runtime, request: TraceRequest, lease: Lease, queued: StatusEvent) -> Claim:
    """The pickup in one round trip: the in-flight record, the ``queued`` answer and the lease
    script, which on ``go`` also writes the first attempt's ``status running`` (what
    :func:`~worker.service.finish.mark_running` writes), in one MULTI. The record comes first: a
    job this entry starts stays findable even if the entry is trimmed away. On a Redis Cluster,
    where the record and the events stream are in other hash slots, the record is written before
    the MULTI and the running status's events copy after it."""
    job_id, entry_id = lease.job_id, lease.entry_id
    keys, settings = rt.keys, rt.settings
    if rt.cluster:
        await retry_redis(lambda: record(rt, entry_id, job_id), what="in-flight record")
    labels_json = json.dumps(request.labels, sort_keys=True)
    fingerprint = request.fingerprint()
    running: Any = StatusEvent(
        job_id=job_id,
        state=JobState.RUNNING,
        labels=request.labels,
        request_id=entry_id,
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
    ).to_fields()
    events = (keys.events, settings.events_maxlen)

    async def build(w: Write) -> Claim:
        if not rt.cluster:
            w.pipe.hset(inflight_key(keys), entry_id, job_id)
        queue_answer(rt, w, queued)
        lease.queue_begin(
            w.pipe,
            labels_json=labels_json,
            fingerprint=fingerprint,
            max_age_s=request.effective_max_age_s,
            running=running,
            events=None if rt.cluster else events,
        )
        result = await w.execute()
        return lease.claim(result[-1])

    claim = await rt.shielded(
        rt.write(keys.job(job_id), build, what="pickup", give_up_after_s=settings.lease_s)
    )
    if claim.kind == "go" and rt.cluster:
        fields = {**running, "attempt": str(claim.attempt)}
        await rt.shielded(
            write_shared(
                rt.redis,
                records=[lambda pipe: pipe.xadd(events[0], fields, maxlen=events[1], approximate=True)],
                acks=[],
                what="status running (events)",
            )
        )
    return claim


class _JobTimeout(Exception):
    """The attempt ran longer than job_timeout_s."""


@dataclass
class _Transient:
    """An attempt ended by a transient error; the status to publish if no retry is left."""

    status: StatusEvent
    #: Redis itself was unavailable: not the job's fault, so it does not spend ``retry_max``.
    redis: bool = False


#: Attempts a Redis outage may end in a row before the job fails (each waits for Redis to answer
#: first): bounds a Redis that answers PING but fails every job command.
REDIS_OUTAGE_ATTEMPTS = 10


class _Job:
    def __init__(
        self,
        rt: Runtime,
        request: TraceRequest,
        job_id: str,
        entry_id: str,
        lease: Lease,
        *,
        start_id: str | None,
    ) -> None:
        self.rt = rt
        self.request = request
        self.job_id = job_id
        self.entry_id = entry_id
        self.lease = lease
        self.stop_reason: Literal["cancel", "lease"] | None = None
        self.stopped = asyncio.Event()
        self.current: asyncio.Task[StatusEvent] | None = None
        #: Reply stream of the delivery's current (latest) attempt.
        self.reply: ReplyStream | None = None
        #: Job-stream id of the current attempt's running entry.
        self.start_id: str | None = start_id
        #: The first attempt's running status was written at pickup.
        self._running_written = start_id is not None
        #: The attempt's final progress entry, not yet written: it goes with the terminal status
        #: (one MULTI, after the attempt's held last chunk), or on its own before a retry.
        self.progress: ProgressEvent | None = None
        self.log = JobLog(log, {"job_id": job_id, "entry_id": entry_id, "attempt": lease.attempt})

    # -- the delivery
    async def run(self) -> None:
        watch = asyncio.create_task(self._watch())
        try:
            status = await self._attempts()
            written = status is not None and await finish(
                self.rt,
                entry_id=self.entry_id,
                status=status,
                lock_value=self.lease.value,
                before=self._held_entries(status),
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
        attempt); the terminal status, or None when the lease was lost.

        A Redis outage does not spend ``retry_max`` (the job did nothing wrong, and a worker's pooled
        connections can fail once each after Redis comes back): the next attempt waits until Redis
        answers, up to ``lease_s``, and at most ``REDIS_OUTAGE_ATTEMPTS`` outages in a row are retried."""
        settings = self.rt.settings
        delay = settings.retry_backoff_s
        retries = outages = 0
        while True:
            outcome = await self._attempt()
            if not isinstance(outcome, _Transient):
                return outcome
            await self._write_progress()  # the failed attempt's final progress, before the next one
            if outcome.redis and outages < REDIS_OUTAGE_ATTEMPTS:
                outages += 1
                self.log.warning("redis unavailable (%s); retrying once it answers", outcome.status.message)
                await retry_redis(self.rt.redis.ping, what="ping", give_up_after_s=settings.lease_s)
            else:
                if retries == settings.retry_max:
                    return outcome.status
                retries += 1
                outages = 0
                self.rt.metrics.retries.inc()
                self.log.warning(
                    "transient failure (%s); retry %d in %.1fs", outcome.status.message, retries, delay
                )
                if await self._sleep_unless_stopped(delay):
                    return await self._stopped_outcome()
                delay = min(delay * 2, settings.retry_backoff_max_s)
            if self.stop_reason is not None:
                return await self._stopped_outcome()
            attempt = await retry_redis(self.lease.next_attempt, what="next attempt")
            if attempt is None:
                return None
            self.log.extra = {**(self.log.extra or {}), "attempt": attempt}

    def _held_entries(self, status: StatusEvent) -> list[ChunkEvent | ProgressEvent]:
        """The entries of the last attempt written with its terminal status: its last chunk (when
        the job succeeded; otherwise the attempt's chunks are dropped anyway), then its final
        progress (the order they would have had on their own)."""
        held: list[ChunkEvent | ProgressEvent] = []
        last = self.reply.held if self.reply is not None else None
        if last is not None and status.state == JobState.SUCCEEDED:
            held.append(last)
        if self.progress is not None:
            held.append(self.progress)
        return held

    async def _write_progress(self) -> None:
        progress, self.progress = self.progress, None
        if progress is None or self.reply is None:
            return
        try:
            await self.reply.progress(progress)
        except Exception as exc:  # an observer never fails the job
            self.log.debug("progress entry not written: %s", exc)

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
        if self._running_written:
            self._running_written = False  # by the pickup (the first attempt only)
        else:
            try:
                running = self._status(
                    JobState.RUNNING, lease_s=rt.settings.lease_s, heartbeat_s=rt.settings.heartbeat_s
                )
                self.start_id = await mark_running(rt, running)
            except TRANSIENT as exc:
                return _Transient(self._failed(ErrorCode.INTERNAL, f"redis unavailable: {exc}"), redis=True)
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
        except LeaseLost:
            self._stop("lease")  # a chunk write found the lock taken: the job is someone else's
            status = None
        except PermanentError as exc:
            status = self._failed(exc.code, str(exc) or exc.code.value)
        except BlobStoreRefused as exc:
            # The store refuses writes for good: no retry (a retry would compute the trace again).
            status = self._failed(exc.code, str(exc) or exc.code.value)
        except RetryableError as exc:
            return _Transient(self._failed(exc.code, str(exc) or exc.code.value))
        except _JobTimeout:
            status = self._failed(
                ErrorCode.TIMEOUT, f"the job ran longer than job_timeout_s={rt.settings.job_timeout_s:g}s"
            )
        except TRANSIENT as exc:
            return _Transient(self._failed(ErrorCode.INTERNAL, f"redis unavailable: {exc}"), redis=True)
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
        gzip = (request.compress or rt.settings.blob_compress) == "gzip"
        key = blob_key(request, self.job_id, gzip=gzip)
        await _store_accepts_writes(rt)
        stored = await rt.store.open_writer(key)
        writer: BlobWriterLike = GzipWriter(stored, rt.settings.blob_compress_level) if gzip else stored
        committed = False
        reply = ReplyStream(
            rt.redis,
            rt.keys,
            self.job_id,
            self.lease.attempt,
            transaction=rt.transaction,
            hold_last=True,
            lock_value=self.lease.value,
        )
        self.reply = reply
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
            self.progress = await pump.close(publish=False)
            info = await writer.commit()
            committed = True
            url = await rt.store.presign(key, rt.settings.blob_url_expires_s)
        finally:
            self.progress = await pump.close(publish=False) or self.progress
            if not committed:
                await _abort(writer)
        duration = time.monotonic() - started
        spans = pump.spans
        rt.metrics.spans.inc(spans)
        # size and sha256 are those of the trace (the chunks), whether or not the object is compressed.
        size, sha256 = (
            (writer.size, writer.sha256) if isinstance(writer, GzipWriter) else (info.size, info.sha256)
        )
        rt.metrics.trace_bytes.inc(size)
        if duration > 0 and spans:
            rt.metrics.spans_per_second.observe(spans / duration)
        return self._status(
            JobState.SUCCEEDED,
            uri=info.uri,
            url=url,
            size=size,
            sha256=sha256,
            encoding="gzip" if gzip else None,
            stored_size=info.size if gzip else None,
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


async def _store_accepts_writes(rt: Runtime) -> None:
    """Before computing a trace: the blob store's readiness probe (a small write + delete, what
    ``/readyz`` checks). A store refusing writes (permission, missing bucket) fails the job now, not
    after the whole trace was computed; any other answer (slow, transient) lets the attempt go on and
    meet it at the write. A store that passed the check within ``STORE_CHECK_EVERY_S`` is not probed.

    Raises:
        BlobStoreRefused: the store refuses writes.
    """
    last = _store_ok_at.get(rt.store)
    if last is not None and time.monotonic() - last < STORE_CHECK_EVERY_S:
        return
    try:
        async with asyncio.timeout(STORE_CHECK_TIMEOUT_S):
            await rt.store.ping()
        _store_ok_at[rt.store] = time.monotonic()
    except BlobStoreRefused:
        raise
    except Exception as exc:
        log.debug("blob store check before the attempt: %s", exc)


async def _abort(writer: BlobWriterLike) -> None:
    try:
        await asyncio.shield(asyncio.ensure_future(writer.abort()))
    except Exception:
        log.warning("blob abort failed", exc_info=True)
