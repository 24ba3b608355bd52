"""Status writes that move a job between states, each in one MULTI.

:func:`finish` is the one way an attempt ends: terminal status on the job stream, the state hash,
the event on ``<prefix>:events``, expiry of the job's keys, release of the lock, the dead-letter
entry when there is one, and the XACK and XDEL of the request entry. It runs shielded from
cancellation and retries through Redis blips, and it is guarded by the lock (WATCH): a worker that
lost its lease writes nothing, so a job never shows two terminal states from two workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from contracts.events import StatusEvent
from contracts.keys import Keys
from contracts.states import JobState
from worker.service.redis_io import retry_redis
from worker.service.runtime import Runtime
from worker.sinks.reply_stream import queue_entry

__all__ = ["ack", "finish", "inflight_key", "mark_running", "reply_duplicate"]


def inflight_key(keys: Keys) -> str:
    """``<prefix>:inflight``: request entry id -> job id of entries being worked on (worker-internal;
    :mod:`worker.service.inflight`). The acknowledging MULTI removes the entry's record."""
    return f"{keys.prefix}:inflight"


def _state_mapping(status: StatusEvent) -> dict[str, str | bytes]:
    return status.to_fields()


async def mark_running(rt: Runtime, status: StatusEvent) -> None:
    """Start of an attempt: ``status running`` with its number, state hash, event; keys kept alive."""
    keys = rt.keys
    job_stream, state_key = keys.job(status.job_id), keys.state(status.job_id)

    async def write() -> None:
        async with rt.redis.pipeline(transaction=True) as pipe:
            fields: Any = status.to_fields()
            queue_entry(pipe, keys, status.job_id, fields)
            pipe.delete(state_key)
            pipe.hset(state_key, mapping=fields)
            pipe.xadd(keys.events, fields, maxlen=rt.settings.events_maxlen, approximate=True)
            pipe.persist(job_stream)
            pipe.persist(keys.status_stream(status.job_id))
            await pipe.execute()

    await retry_redis(write, what="status running", give_up_after_s=rt.settings.lease_s / 2)


async def finish(
    rt: Runtime,
    *,
    entry_id: str,
    status: StatusEvent | None,
    lock_value: str | None,
    dead: Mapping[str, str | bytes] | None = None,
    drop_chunks: Sequence[bytes | str] = (),
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
        drop_chunks: job-stream entry ids to XDEL with the status (chunks of attempts that did not
            succeed).

    Returns:
        Whether the status was written.
    """
    return await rt.shielded(_finish(rt, entry_id, status, lock_value, dead, drop_chunks=drop_chunks))


async def _finish(
    rt: Runtime,
    entry_id: str,
    status: StatusEvent | None,
    lock_value: str | None,
    dead: Mapping[str, str | bytes] | None,
    *,
    drop_chunks: Sequence[bytes | str] = (),
) -> bool:
    keys = rt.keys

    async def write() -> bool:
        if status is None:
            await _ack_and_dead(rt, entry_id, dead)
            return False
        lock_key, state_key = keys.lock(status.job_id), keys.state(status.job_id)
        async with rt.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(lock_key, state_key)
                holder = await pipe.get(lock_key)
                holder_text = holder.decode() if isinstance(holder, bytes) else None
                event = status
                if lock_value is not None:
                    if holder_text != lock_value:
                        # Lease lost: the job (and maybe this very entry) belongs to another worker now.
                        return False
                    allowed = True
                else:
                    current = await pipe.hmget(state_key, ["state", "attempt"])
                    state = current[0].decode() if isinstance(current[0], bytes) else None
                    allowed = holder is None and state != JobState.SUCCEEDED.value
                    event = status.model_copy(update={"attempt": int(current[1] or 0)})
                pipe.multi()  # type: ignore[no-untyped-call]
                if allowed:
                    _terminal(rt, pipe, event)
                    if drop_chunks:
                        pipe.xdel(keys.job(event.job_id), *drop_chunks)
                _queue_ack_and_dead(rt, pipe, entry_id, dead)
                await pipe.execute()
                return allowed
            except WatchError:
                raise _Retry from None

    while True:
        try:
            return await retry_redis(write, what="terminal status", give_up_after_s=300.0)
        except _Retry:
            continue


class _Retry(Exception):
    """The lock or state changed between WATCH and EXEC: decide again."""


def _terminal(rt: Runtime, pipe: Pipeline, status: StatusEvent) -> None:
    keys = rt.keys
    job_stream, state_key = keys.job(status.job_id), keys.state(status.job_id)
    fields: Any = _state_mapping(status)
    ttl = rt.settings.job_ttl_s
    queue_entry(pipe, keys, status.job_id, fields)
    pipe.delete(state_key)
    pipe.hset(state_key, mapping=fields)
    pipe.xadd(keys.events, fields, maxlen=rt.settings.events_maxlen, approximate=True)
    # Chunk bytes are what costs memory: they go sooner than the statuses (`:status`, `:state`).
    pipe.expire(job_stream, min(rt.settings.chunk_ttl_s, ttl))
    pipe.expire(keys.status_stream(status.job_id), ttl)
    pipe.expire(state_key, ttl)
    pipe.delete(keys.lock(status.job_id))
    if status.state == JobState.CANCELLED:
        # A resubmission after a cancel must not be cancelled by the same key.
        pipe.delete(keys.cancel(status.job_id))


def _queue_ack_and_dead(
    rt: Runtime, pipe: Pipeline, entry_id: str, dead: Mapping[str, str | bytes] | None
) -> None:
    keys = rt.keys
    if dead is not None:
        fields: Any = dict(dead)
        pipe.xadd(keys.dead, fields, maxlen=rt.settings.dead_maxlen, approximate=True)
    _ack_and_delete(pipe, keys, entry_id)


def _ack_and_delete(pipe: Pipeline, keys: Keys, entry_id: str) -> None:
    """XACK, then XDEL: an answered request (kept in full on the dead-letter stream when it is
    dead-lettered) would otherwise stay on the request stream for ever, growing Redis's memory."""
    pipe.xack(keys.requests, keys.group, entry_id)
    pipe.xdel(keys.requests, entry_id)
    pipe.hdel(inflight_key(keys), entry_id)


async def _ack_and_dead(rt: Runtime, entry_id: str, dead: Mapping[str, str | bytes] | None) -> None:
    async with rt.redis.pipeline(transaction=True) as pipe:
        _queue_ack_and_dead(rt, pipe, entry_id, dead)
        await pipe.execute()


async def ack(rt: Runtime, entry_id: str, dead: Mapping[str, str | bytes] | None = None) -> None:
    """Acknowledge an entry (and dead-letter it) without touching any job. Shielded."""
    await rt.shielded(_finish(rt, entry_id, None, None, dead))


async def reply_duplicate(rt: Runtime, entry_id: str, job_id: str, labels: dict[str, str]) -> None:
    """Tell a duplicate request the job's current state on its job stream, then XACK. Starts no work."""
    keys = rt.keys

    async def write() -> None:
        raw = await rt.redis.hgetall(keys.state(job_id))
        current = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        state = JobState(current.get("state", JobState.RUNNING.value))
        event = StatusEvent(
            job_id=job_id,
            attempt=int(current.get("attempt", 0)),
            state=state,
            labels=labels,
            detail="duplicate request; the job is already " + state.value,
            uri=current.get("uri"),
            url=current.get("url"),
            size=_int(current.get("size")),
            sha256=current.get("sha256"),
        )
        fields: Any = event.to_fields()
        async with rt.redis.pipeline(transaction=True) as pipe:
            queue_entry(pipe, keys, job_id, fields)
            if state.terminal:
                # The XADDs recreate a stream that had expired (chunks gone, blob kept): give it
                # its TTL back, without extending one still running.
                ttl = rt.settings.job_ttl_s
                pipe.expire(keys.job(job_id), min(rt.settings.chunk_ttl_s, ttl), nx=True)
                pipe.expire(keys.status_stream(job_id), ttl, nx=True)
            _ack_and_delete(pipe, keys, entry_id)
            await pipe.execute()

    await rt.shielded(retry_redis(write, what="duplicate reply"))


def _int(value: str | None) -> int | None:
    return int(value) if value is not None else None
