"""Answers to one request entry: status entries that carry ``request_id`` (docs/PROTOCOL.md §2).

Every request gets its own answers on its job's stream (copied to ``<prefix>:events``): ``queued``
at pickup, then ``running`` (or a duplicate's ``running``/``succeeded``), then one terminal status.
A job-level status (the state hash) is written by :mod:`worker.service.finish`; this module writes
the per-request ones. The state hash keeps two state-only fields across status writes:
``fingerprint`` (sha256 of the canonical request that created the job) and ``started_ms`` (Redis
clock when the current attempt started, the freshness reference of ``max_age_s``).

Every answer is a :class:`~worker.service.redis_io.Write`: the entries on the job's streams (one
hash slot) in a MULTI, the copy on ``<prefix>:events`` and the acknowledgement of the request as
shared-stream commands (in the same MULTI on one Redis, after it on a Redis Cluster).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.client import Pipeline

from contracts.events import StatusEvent
from contracts.keys import Keys
from worker.service.redis_io import Write
from worker.service.runtime import Runtime

__all__ = [
    "STATE_ONLY_FIELDS",
    "answer",
    "inflight_key",
    "queue_ack",
    "queue_answer",
    "queue_entry",
    "queue_event",
    "queue_state",
]

#: Fields of the state hash that are not status fields; kept when a status replaces the hash.
STATE_ONLY_FIELDS = ("fingerprint", "started_ms")

# KEYS: job stream, status stream, lock, state. ARGV: job-stream ttl ms, status-stream ttl ms, ttl ms
# of a stream a short-lived answer creates ('' for an answer to a request), then field/value pairs.
# The entry goes to the job stream and its chunk-less status stream. Streams that no running job
# keeps alive get their TTL (the job stream chunk_ttl_s: it may be recreated after its chunks
# expired; the status stream job_ttl_s) when they have none; an answer to a request also extends them
# to it when the job is unknown (no state hash: e.g. streams that hold only a short-lived
# ``not_found`` cancel answer). A short-lived answer gives a stream it creates ARGV[3] (at most its
# TTL) and extends nothing. No answer leaves a key for ever.
_ANSWER = """
local fresh = {redis.call('EXISTS', KEYS[1]) == 0, redis.call('EXISTS', KEYS[2]) == 0}
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
if redis.call('EXISTS', KEYS[3]) == 0 then
  local short = ARGV[3] ~= ''
  local extend = not short and redis.call('EXISTS', KEYS[4]) == 0
  for i = 1, 2 do
    local ttl, left = tonumber(ARGV[i]), redis.call('PTTL', KEYS[i])
    if fresh[i] and short then
      redis.call('PEXPIRE', KEYS[i], math.min(tonumber(ARGV[3]), ttl))
    elseif left < 0 or (extend and left < ttl) then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
return id
"""
# KEYS: state. ARGV: field/value pairs. Replaces the status fields, keeps the state-only ones.
_STATE = """
local keep = redis.call('HMGET', KEYS[1], 'fingerprint', 'started_ms')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
if keep[1] then redis.call('HSET', KEYS[1], 'fingerprint', keep[1]) end
if keep[2] then redis.call('HSET', KEYS[1], 'started_ms', keep[2]) end
return 1
"""


def inflight_key(keys: Keys) -> str:
    """``<prefix>:inflight``: request entry id -> job id of entries being worked on (worker-internal;
    :mod:`worker.service.inflight`). Every write that acknowledges a request entry removes its record."""
    return f"{keys.prefix}:inflight"


def _flat(fields: dict[str, str | bytes]) -> list[str | bytes]:
    out: list[str | bytes] = []
    for key, value in fields.items():
        out += [key, value]
    return out


def queue_entry(
    rt: Runtime, pipe: Pipeline, job_id: str, fields: dict[str, str | bytes], *, new_ttl_s: int | None = None
) -> None:
    """Queue a status or cancel entry on the job stream and its status stream (like
    ``worker.sinks.reply_stream.queue_entry``); streams no running job keeps alive get their TTL
    (``chunk_ttl_s`` for the job stream, ``job_ttl_s`` for the status stream).

    Args:
        new_ttl_s: for an answer that must not keep the job's streams alive (a cancel that changed
            nothing): TTL (s) of a stream this entry creates; it extends no TTL. A later answer to
            a request of the job extends such a stream to its TTL.
    """
    keys = rt.keys
    ttl_ms = rt.settings.job_ttl_s * 1000
    chunk_ttl_ms = min(rt.settings.chunk_ttl_s * 1000, ttl_ms)
    new_ttl_ms = "" if new_ttl_s is None else new_ttl_s * 1000
    stream, status_stream = keys.job(job_id), keys.status_stream(job_id)
    pipe.eval(
        _ANSWER, 4, stream, status_stream, keys.lock(job_id), keys.state(job_id), chunk_ttl_ms, ttl_ms,
        new_ttl_ms, *_flat(fields),
    )  # fmt: skip


def queue_answer(rt: Runtime, w: Write, status: StatusEvent) -> None:
    """Queue a per-request (or job-level) status entry on the job stream and the events stream."""
    fields: Any = status.to_fields()
    queue_entry(rt, w.pipe, status.job_id, fields)
    queue_event(rt, w, fields)


def queue_event(rt: Runtime, w: Write, fields: Any) -> None:
    """Queue the copy of a status entry on ``<prefix>:events`` (a shared stream)."""
    events, maxlen = rt.keys.events, rt.settings.events_maxlen
    w.record(lambda pipe: pipe.xadd(events, fields, maxlen=maxlen, approximate=True))


def queue_ack(w: Write, stream: str, group: str, entry_id: str, *, inflight: str | None = None) -> None:
    """Queue XACK, then XDEL, of an answered entry of ``stream`` (requests or cancels): an answered
    entry (kept in full on the dead-letter stream when it is dead-lettered) would otherwise stay on
    the stream for ever, growing Redis's memory. With ``inflight`` (:func:`inflight_key`, for a
    request entry), HDEL of the entry's in-flight record too: a shared key, so on a Redis Cluster
    it goes with the acknowledgement step, after the job's MULTI."""

    def op(pipe: Any) -> None:
        pipe.xack(stream, group, entry_id)
        pipe.xdel(stream, entry_id)
        if inflight is not None:
            pipe.hdel(inflight, entry_id)

    w.acknowledge(op)


def queue_state(rt: Runtime, pipe: Pipeline, status: StatusEvent) -> None:
    """Queue the replacement of the job's state hash by ``status`` (state-only fields kept)."""
    fields: Any = status.to_fields()
    pipe.eval(_STATE, 1, rt.keys.state(status.job_id), *_flat(fields))


async def answer(rt: Runtime, status: StatusEvent, *, ack: str | None = None) -> None:
    """Write one answer (shielded, retried through Redis blips); with ``ack``, XACK+XDEL that entry."""
    keys = rt.keys

    async def build(w: Write) -> None:
        queue_answer(rt, w, status)
        if ack is not None:
            queue_ack(w, keys.requests, keys.group, ack, inflight=inflight_key(keys))
        await w.execute()

    await rt.shielded(rt.write(keys.job(status.job_id), build, what=f"{status.state.value} answer"))
