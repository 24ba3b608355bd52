"""Status writes that move a job between states, each one :class:`~worker.service.redis_io.Write`
(one MULTI on one Redis; on a Redis Cluster, a MULTI on the job's hash slot followed by the
shared streams: events, dead letters, then the acknowledgement).

:func:`finish` is the one way an attempt ends: terminal status on the job stream, the state hash,
the event on ``<prefix>:events``, deletion of the chunk entries of every attempt that did not
succeed (all of them when the job did not succeed), expiry of the job's keys, release of the
lock, the dead-letter entry when there is one, and the XACK and XDEL of the request entry. It runs
shielded from cancellation and retries through Redis blips, and it is guarded by the lock (WATCH):
a worker that lost its lease writes nothing, so a job never shows two terminal states from two workers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from contracts.events import ChunkEvent, ProgressEvent, StatusEvent, parse_entry, utcnow
from contracts.keys import Keys
from contracts.states import JobState
from worker.service.answers import answer, inflight_key, queue_ack, queue_answer, queue_event, queue_state
from worker.service.lease import STOP_FIELD
from worker.service.redis_io import Write, retry_redis, write_shared
from worker.service.runtime import Runtime
from worker.sinks.reply_stream import queue_drop_chunks, queue_entry

__all__ = ["ack", "answer_invalid", "finish", "inflight_key", "mark_running", "reply_duplicate"]


# KEYS: lock, state, requesters. The lock's value, the state hash's state and attempt, and the
# requesters hash (flat field/value list): what the terminal write decides on.
_READ = """
return {redis.call('GET', KEYS[1]), redis.call('HMGET', KEYS[2], 'state', 'attempt'),
        redis.call('HGETALL', KEYS[3])}
"""


async def mark_running(rt: Runtime, status: StatusEvent) -> str:
    """Start of a retry's attempt: ``status running`` with its number, state hash, event; keys
    kept alive (a delivery's first attempt gets the same writes from the pickup's lease script,
    :meth:`worker.service.lease.Lease.queue_begin`).

    Returns:
        The job-stream id of the running entry (where the attempt's chunks start: ``start_id``).
    """
    keys = rt.keys
    job_stream = keys.job(status.job_id)

    async def build(w: Write) -> str:
        pipe = w.pipe
        fields: Any = status.to_fields()
        queue_entry(pipe, keys, status.job_id, fields)  # the job stream's id comes first
        queue_state(rt, pipe, status)
        queue_event(rt, w, fields)
        pipe.persist(job_stream)
        pipe.persist(keys.status_stream(status.job_id))
        pipe.persist(keys.requesters(status.job_id))
        result = await w.execute()
        entry = result[0]
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    return await rt.write(job_stream, build, what="status running", give_up_after_s=rt.settings.lease_s / 2)


async def finish(
    rt: Runtime,
    *,
    entry_id: str,
    status: StatusEvent | None,
    lock_value: str | None,
    dead: Mapping[str, str | bytes] | None = None,
    before: Sequence[ChunkEvent | ProgressEvent] = (),
) -> bool:
    """End a delivery: terminal status (when allowed), dead letter (if given), XACK. Shielded.

    Args:
        rt: the service runtime.
        entry_id: the request entry to acknowledge.
        status: the terminal status to publish, or None for none.
        lock_value: the lock value this delivery holds; None when it holds none, in which case the
            status is written only if nobody holds the lock and the job has not succeeded (its
            attempt number is then the job's current one).
        dead: fields of a dead-letter entry to add to ``<prefix>:dead``.
        before: entries of the attempt to write just before the status, in the same MULTI (its
            held last chunk, on the job stream; its final progress, on the job and status
            streams); only with the status.

    Returns:
        Whether the status was written.
    """
    return await rt.shielded(_finish(rt, entry_id, status, lock_value, dead, before=before))


async def _finish(
    rt: Runtime,
    entry_id: str,
    status: StatusEvent | None,
    lock_value: str | None,
    dead: Mapping[str, str | bytes] | None,
    *,
    before: Sequence[ChunkEvent | ProgressEvent] = (),
) -> bool:
    keys = rt.keys
    if status is None:
        await _ack_and_dead(rt, entry_id, dead, give_up_after_s=300.0)
        return False
    lock_key, state_key = keys.lock(status.job_id), keys.state(status.job_id)
    requesters_key = keys.requesters(status.job_id)

    async def build(w: Write) -> bool:
        pipe = w.pipe
        try:
            await pipe.watch(lock_key, state_key, requesters_key)
            # The three reads in one round trip (the keys stay watched).
            raw: Any = await pipe.eval(_READ, 3, lock_key, state_key, requesters_key)
            holder, current, flat = raw
            holder_text = holder.decode() if isinstance(holder, bytes) else None
            event = status
            if lock_value is not None:
                if holder_text != lock_value:
                    # Lease lost: the job (and maybe this very entry) belongs to another worker now.
                    return False
                allowed = True
            else:
                state = current[0].decode() if isinstance(current[0], bytes) else None
                allowed = holder is None and state != JobState.SUCCEEDED.value
                event = status.model_copy(update={"attempt": int(current[1] or 0)})
            requesters: Any = dict(zip(flat[::2], flat[1::2], strict=True)) if allowed else {}
            pipe.multi()  # type: ignore[no-untyped-call]
            if allowed:
                for entry in before:
                    fields: Any = entry.to_fields()
                    if isinstance(entry, ChunkEvent):
                        pipe.xadd(keys.job(event.job_id), fields)  # chunks: the job stream only
                    else:
                        queue_entry(pipe, keys, event.job_id, fields)
                _terminal(rt, w, event, _decode_requesters(requesters))
            _queue_ack_and_dead(rt, w, entry_id, dead)
            await w.execute()
            return allowed
        except WatchError:
            raise _Retry from None

    while True:
        try:
            return await rt.write(
                keys.job(status.job_id), build, what="terminal status", give_up_after_s=300.0
            )
        except _Retry:
            continue


class _Retry(Exception):
    """The lock or state changed between WATCH and EXEC: decide again."""


def _decode_requesters(raw: Mapping[Any, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in raw.items():
        entry = key.decode() if isinstance(key, bytes) else str(key)
        if entry == STOP_FIELD:
            continue
        try:
            labels = json.loads(value)
        except ValueError:
            labels = {}
        out[entry] = labels if isinstance(labels, dict) else {}
    return out


def _terminal(rt: Runtime, w: Write, status: StatusEvent, requesters: dict[str, dict[str, str]]) -> None:
    """The job's end: one answer per attached request (its own request_id and labels), plus a
    job-level entry (no request_id) when the job was cancelled or no request is attached any
    more; the state hash; the chunks of the attempts that did not succeed deleted (every recorded
    chunk when the job did not succeed, whichever worker or delivery wrote it); expiry; lock
    released."""
    keys = rt.keys
    job_id = status.job_id
    job_stream, state_key = keys.job(job_id), keys.state(job_id)
    ttl = rt.settings.job_ttl_s
    pipe = w.pipe
    for entry, labels in sorted(requesters.items()):
        queue_answer(rt, w, status.model_copy(update={"request_id": entry, "labels": labels}))
    if status.state == JobState.CANCELLED:
        # The job's own end (a follower of the job, not of a request, stops here): answers no request.
        queue_answer(rt, w, status.model_copy(update={"request_id": None}))
    elif not requesters:
        queue_answer(rt, w, status)
    queue_state(rt, pipe, status)
    keep = status.attempt if status.state == JobState.SUCCEEDED else None
    queue_drop_chunks(pipe, keys, job_id, keep)
    # Chunk bytes are what costs memory: they go sooner than the statuses (`:status`, `:state`).
    pipe.expire(job_stream, min(rt.settings.chunk_ttl_s, ttl))
    pipe.expire(keys.status_stream(status.job_id), ttl)
    pipe.expire(state_key, ttl)
    pipe.delete(keys.lock(job_id), keys.requesters(job_id), keys.detached(job_id))


def _queue_ack_and_dead(rt: Runtime, w: Write, entry_id: str, dead: Mapping[str, str | bytes] | None) -> None:
    keys = rt.keys
    if dead is not None:
        fields: Any = dict(dead)
        stream, maxlen = keys.dead, rt.settings.dead_maxlen
        w.record(lambda pipe: pipe.xadd(stream, fields, maxlen=maxlen, approximate=True))
    queue_ack(w, keys.requests, keys.group, entry_id, inflight=inflight_key(keys))


def _ack_and_delete(pipe: Pipeline, keys: Keys, entry_id: str) -> None:
    """XACK, then XDEL, of a request entry on one pipeline (what :func:`queue_ack` queues)."""
    pipe.xack(keys.requests, keys.group, entry_id)
    pipe.xdel(keys.requests, entry_id)
    pipe.hdel(inflight_key(keys), entry_id)


async def _ack_and_dead(
    rt: Runtime, entry_id: str, dead: Mapping[str, str | bytes] | None, *, give_up_after_s: float
) -> None:
    """The dead letter (if any), then the acknowledgement, of an entry that names no job."""
    keys = rt.keys
    records = []
    if dead is not None:
        fields: Any = dict(dead)
        stream, maxlen = keys.dead, rt.settings.dead_maxlen
        records.append(lambda pipe: pipe.xadd(stream, fields, maxlen=maxlen, approximate=True))
    await write_shared(
        rt.redis,
        records=records,
        acks=[lambda pipe: _ack_and_delete(pipe, keys, entry_id)],
        what="acknowledgement",
        give_up_after_s=give_up_after_s,
    )


async def ack(rt: Runtime, entry_id: str, dead: Mapping[str, str | bytes] | None = None) -> None:
    """Acknowledge an entry (and dead-letter it) without touching any job. Shielded."""
    await rt.shielded(_finish(rt, entry_id, None, None, dead))


async def reply_duplicate(rt: Runtime, entry_id: str, job_id: str, labels: dict[str, str], kind: str) -> None:
    """Answer a request whose job is running (it was attached: its terminal answer comes at the end)
    or succeeded recently enough (the job's outcome, every field, under this request's id), then
    XACK. Starts no work."""
    raw = await retry_redis(lambda: rt.redis.hgetall(rt.keys.state(job_id)), what="duplicate state")
    current = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    for name in ("fingerprint", "started_ms", "request_id", "detail", "labels", "time"):
        current.pop(name, None)
    current.setdefault("state", JobState.RUNNING.value)
    current.setdefault("type", "status")
    current.setdefault("job_id", job_id)
    state = JobState(current["state"])
    if kind == "locked":
        detail = "duplicate request; joined the running job (its answer comes when the job ends)"
        current = {k: current[k] for k in ("job_id", "attempt", "type", "state") if k in current}
        current["state"] = JobState.RUNNING.value
    else:
        detail = "duplicate request; the job already " + state.value
        if state == JobState.SUCCEEDED and not await _chunks_kept(rt, job_id, current.get("start_id")):
            # The job stream (chunk_ttl_s) expired before the status (job_ttl_s): no start_id into
            # a stream that is gone; chunks 0 says "nothing to read here, fetch url".
            current.pop("start_id", None)
            current["chunks"] = "0"
            detail += "; its chunks expired: fetch the trace from url"
    event = parse_entry({**current, "labels": json.dumps(labels)})
    assert isinstance(event, StatusEvent)
    event = event.model_copy(update={"request_id": entry_id, "detail": detail, "time": utcnow()})
    await answer(rt, event, ack=entry_id)


async def _chunks_kept(rt: Runtime, job_id: str, start_id: str | None) -> bool:
    """Whether the succeeded attempt's chunks are still on the job stream: its ``running`` entry
    (``start_id``) is (or, without ``start_id``, the stream exists)."""
    key = rt.keys.job(job_id)
    if start_id:
        found: Any = await retry_redis(lambda: rt.redis.xrange(key, start_id, start_id, count=1), what="run")
        return bool(found)
    return bool(await retry_redis(lambda: rt.redis.exists(key), what="chunks"))


async def answer_invalid(
    rt: Runtime, entry_id: str, status: StatusEvent, dead: Mapping[str, str | bytes] | None
) -> None:
    """Answer an invalid request that names a job: its ``failed`` status on the job stream (and
    events), the dead letter, XACK. The job's state hash is written only when the job has none."""
    keys = rt.keys
    state_key = keys.state(status.job_id)

    async def build(w: Write) -> None:
        pipe = w.pipe
        try:
            await pipe.watch(state_key)
            known = await pipe.exists(state_key)
            pipe.multi()  # type: ignore[no-untyped-call]
            queue_answer(rt, w, status)
            if not known:
                queue_state(rt, pipe, status)
                pipe.expire(state_key, rt.settings.job_ttl_s)
            _queue_ack_and_dead(rt, w, entry_id, dead)
            await w.execute()
        except WatchError:
            raise _Retry from None

    async def loop() -> None:
        while True:
            try:
                await rt.write(keys.job(status.job_id), build, what="invalid-request answer")
                return
            except _Retry:
                continue

    await rt.shielded(loop())
