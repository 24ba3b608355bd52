"""In-flight request entries: ``<prefix>:inflight``, a hash of request entry id -> job id.

A worker records its entry here before it takes the job's lease, and the MULTI that acknowledges
the entry (:mod:`worker.service.finish`) removes it. The record outlives the entry itself: when the
request stream is trimmed (``XADD ... MAXLEN``) while the worker running a job is dead, Redis 7's
XCLAIM silently drops the missing entry from the pending list, and nothing else remembers the job.
:func:`sweep` (run by every reclaim pass) finds such records: nobody holds the job's lock and the
entry is no longer pending, so nobody will ever finish the job. It ends the job ``failed``
(``internal``, retryable, a message naming the entry) so that a requester waiting on it sees a
terminal state, and drops the record.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from contracts.errors import ErrorCode
from contracts.events import StatusEvent
from contracts.states import JobState
from worker.service.finish import ack, finish, inflight_key
from worker.service.runtime import Runtime

__all__ = ["inflight_key", "record", "sweep"]

log = logging.getLogger("worker.service.inflight")


async def record(rt: Runtime, entry_id: str, job_id: str) -> None:
    """Remember that ``entry_id`` is being worked on for ``job_id`` (before the lease is taken)."""
    await rt.redis.hset(inflight_key(rt.keys), entry_id, job_id)


async def sweep(rt: Runtime) -> int:
    """End the jobs whose entries vanished while nobody held them; returns how many were ended.

    A record is orphaned when its entry is not running here, the job's lock is free (the lease
    of a dead holder has expired) and the entry is no longer in the group's pending list (acked
    entries have no record, so it was deleted). A record whose job already ended is just dropped.
    """
    keys, redis = rt.keys, rt.redis
    raw: Any = await redis.hgetall(inflight_key(keys))
    ended = 0
    for entry_b, job_b in raw.items():
        entry_id, job_id = _text(entry_b), _text(job_b)
        if entry_id in rt.active or await redis.exists(keys.lock(job_id)):
            continue
        pending: Any = await redis.xpending_range(
            keys.requests, keys.group, min=entry_id, max=entry_id, count=1
        )
        if pending:
            continue  # still claimable: the reclaim loop delivers it again
        state: Any = await redis.hmget(keys.state(job_id), ["state", "labels"])
        current = _text(state[0]) if state[0] is not None else None
        if current is not None and JobState(current).terminal:
            await ack(rt, entry_id)  # the job ended; only the record is left
            continue
        status = StatusEvent.model_validate(
            {
                "job_id": job_id,
                "attempt": 0,  # finish() takes the job's current attempt
                "state": JobState.FAILED,
                "labels": _labels(state[1]),
                "error_code": ErrorCode.INTERNAL,
                "retryable": True,
                "message": (
                    f"request entry {entry_id} was removed from {keys.requests} (trimmed or deleted) "
                    "while no worker held the job; it cannot be run again: resubmit the request"
                ),
            }
        )
        if await finish(rt, entry_id=entry_id, status=status, lock_value=None):
            ended += 1
            log.warning("job %s failed: its request entry %s vanished while it was running", job_id, entry_id)
    return ended


def _labels(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    try:
        value = json.loads(_text(raw))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
