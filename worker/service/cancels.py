"""Cancel entries on ``<prefix>:cancels``: a requester detaches its request from a job, or stops it.

A cancel is an entry with ``job_id`` and, optionally, ``request_id`` (the id XADD returned for the
request). Every worker reads the stream in the workers' consumer group, outside the job slots, so a
cancel is handled at once even when every slot is busy. Outcomes (a ``cancel`` entry on the job
stream, ``cancel_id`` = the cancel entry's id):

- ``request_id`` attached to the running job: that request is answered ``cancelled`` at once and
  leaves the job (``detached``); when it is the last one, the job stops instead (``cancelled``) and
  the request is answered ``cancelled`` once the job has ended.
- ``request_id`` of a request for this job not picked up yet (still on the request stream; its own or
  derived job id is checked): it is answered ``cancelled``
  when a worker picks it up, without running (``pending``).
- no ``request_id``, the job runs: it stops; every attached request is answered ``cancelled`` once
  it has (``cancelled``).
- no ``request_id``, no run, requests for the job wait on the request stream (and the job did not
  succeed): each is answered ``cancelled`` when a worker picks it up, without running, and the last
  one picked up ends the job ``cancelled`` (state hash and a job-level status) (``pending``).
- otherwise ``not_found`` or ``already_ended``: nothing changes, and nothing is left behind that
  could end a later run (cancels name requests; a later run has new request ids). Job streams
  this answer creates expire after :data:`ANSWER_ONLY_TTL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any

from redis.exceptions import WatchError

from contracts._runs import job_requests, request_job_id
from contracts.events import REQUEST_ID_PATTERN, CancelEvent, CancelOutcome, StatusEvent
from contracts.request import JOB_ID_PATTERN
from contracts.states import JobState
from worker.service.answers import inflight_key, queue_ack, queue_answer, queue_entry, queue_state
from worker.service.lease import HELD_PREFIX, STOP_FIELD
from worker.service.redis_io import TRANSIENT, Write, write_shared
from worker.service.runtime import Runtime

__all__ = ["ANSWER_ONLY_TTL_S", "CancelLoop", "answer_held", "handle_cancel"]

log = logging.getLogger("worker.service.cancels")

_JOB_ID = re.compile(JOB_ID_PATTERN)
_ENTRY_ID = re.compile(REQUEST_ID_PATTERN)
#: A cancel entry left pending this long by a dead worker is taken over.
_RECLAIM_IDLE_MS = 10_000

#: TTL (s) of job streams that a ``not_found``/``already_ended`` answer creates (the job has none):
#: long enough for the requester to read the answer, short enough to leave nothing behind.
ANSWER_ONLY_TTL_S = 60

# KEYS: requesters, detached, cancelled, state. ARGV: request id ('' = the whole job), ttl s, then
# the ids of the job's requests still waiting on the request stream (the named one, or all of them).
# A job that no request wants any more gets the field STOP in its requesters hash: the running
# worker stops it and answers every request still in the hash ``cancelled`` when the job has ended
# (so an answer ``cancelled`` means the job no longer runs, and a resubmission starts afresh).
# Waiting requests go to the cancelled set: answered ``cancelled`` at pickup, without running;
# those of a cancel without request_id carry HELD (the last one picked up ends the job).
_CANCEL = (
    f"local stop, held = '{STOP_FIELD}', '{HELD_PREFIX}'"
    + """
local waiting = #ARGV - 2
if ARGV[1] ~= '' then
  local labels = redis.call('HGET', KEYS[1], ARGV[1])
  if labels then
    local others = redis.call('HLEN', KEYS[1]) - 1
    if redis.call('HEXISTS', KEYS[1], stop) == 1 then others = others - 1 end
    if others <= 0 then
      redis.call('HSET', KEYS[1], stop, '1')
      return {'stopping', '0'}
    end
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('SADD', KEYS[2], ARGV[1])
    return {'detached', tostring(others), ARGV[1], labels}
  end
  if waiting > 0 then
    redis.call('SADD', KEYS[3], ARGV[1])
    redis.call('EXPIRE', KEYS[3], ARGV[2])
    return {'pending', '1'}
  end
  return {'none', '0'}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], stop, '1')
  return {'stopping', '0'}
end
if waiting == 0 or redis.call('HGET', KEYS[4], 'state') == 'succeeded' then return {'none', '0'} end
for i = 3, #ARGV do redis.call('SADD', KEYS[3], held .. ARGV[i]) end
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {'pending', tostring(waiting)}
"""
)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def handle_cancel(rt: Runtime, cancel_id: str, fields: dict[Any, Any]) -> CancelEvent | None:
    """Apply one cancel entry and answer it on the job stream; None when the entry is unusable
    (it is then dead-lettered by the caller)."""
    keys = rt.keys
    norm = {_text(k): _text(v) for k, v in fields.items()}
    job_id, request_id = norm.get("job_id", ""), norm.get("request_id") or ""
    if not _JOB_ID.fullmatch(job_id) or (request_id and not _ENTRY_ID.fullmatch(request_id)):
        return None
    if request_id:
        found: Any = await rt.redis.xrange(keys.requests, request_id, request_id, count=1)
        # Only a request for THIS job may be held back: a request_id naming another job's waiting
        # request (or any other entry) is not attached here, whatever the job's state.
        waiting = [request_id] if found and _entry_job_id(found[0][1]) == job_id else []
    else:
        async with contextlib.aclosing(job_requests(rt.redis, keys, job_id)) as scan:
            waiting = [entry async for entry in scan]
    raw: Any = await rt.redis.eval(
        _CANCEL,
        4,
        keys.requesters(job_id),
        keys.detached(job_id),
        keys.cancelled(job_id),
        keys.state(job_id),
        request_id,
        rt.settings.job_ttl_s,
        *waiting,
    )
    kind, left = _text(raw[0]), int(_text(raw[1]))
    pairs = [_text(x) for x in raw[2:]]
    detached = dict(zip(pairs[::2], pairs[1::2], strict=True))
    state: Any = await rt.redis.hmget(keys.state(job_id), ["state", "attempt"])
    current = _text(state[0]) if state[0] is not None else None
    attempt = int(_text(state[1])) if state[1] is not None else 0
    if kind == "stopping":
        outcome = CancelOutcome.CANCELLED
        detail = "the job stops: no request wants it any more (answered cancelled when it has ended)"
    elif kind == "detached":
        outcome, detail = CancelOutcome.DETACHED, f"the job goes on for {left} other request(s)"
    elif kind == "pending" and request_id:
        outcome, detail = CancelOutcome.PENDING, "the request will be answered cancelled when picked up"
    elif kind == "pending":
        outcome = CancelOutcome.PENDING
        detail = (
            f"{left} waiting request(s) will be answered cancelled when picked up, without running; "
            "the job then ends cancelled"
        )
    elif current is not None and JobState(current).terminal:
        outcome, detail = CancelOutcome.ALREADY_ENDED, f"the job already ended {current}"
    else:
        what = (
            f"request {request_id} is not attached to job {job_id}"
            if request_id
            else f"no job {job_id} is running"
        )
        outcome, detail = CancelOutcome.NOT_FOUND, what
    ack = CancelEvent(job_id=job_id, attempt=attempt, cancel_id=cancel_id, request_id=request_id or None,
                      outcome=outcome, detail=detail)  # fmt: skip

    # An answer to a cancel that changed nothing must not keep a job's streams alive for a day.
    short = ANSWER_ONLY_TTL_S if outcome in (CancelOutcome.NOT_FOUND, CancelOutcome.ALREADY_ENDED) else None

    async def build(w: Write) -> None:
        for entry, labels_json in sorted(detached.items()):
            labels = _labels(labels_json)
            status = StatusEvent(job_id=job_id, attempt=attempt, state=JobState.CANCELLED, labels=labels,
                                 request_id=entry, detail="cancelled on request")  # fmt: skip
            queue_answer(rt, w, status)
        queue_entry(rt, w.pipe, job_id, ack.to_fields(), new_ttl_s=short)
        queue_ack(w, keys.cancels, keys.group, cancel_id)
        await w.execute()

    await rt.shielded(rt.write(keys.job(job_id), build, what="cancel answer"))
    log.info("cancel %s of job %s: %s", cancel_id, job_id, outcome.value,
             extra={"job_id": job_id, "entry_id": cancel_id})  # fmt: skip
    return ack


async def answer_held(rt: Runtime, entry_id: str, status: StatusEvent, *, ends_job: bool) -> None:
    """Answer a request cancelled before pickup (``status``: its ``cancelled``) and XACK+XDEL it;
    with ``ends_job`` (the last request a cancel without request_id held back), the job also ends
    ``cancelled`` (job-level status and state hash, attempt unchanged) unless a run holds its lease
    or it is ``running``/``succeeded`` (another request ran it meanwhile). Shielded, retried."""
    keys = rt.keys
    job_id = status.job_id
    lock, state_key = keys.lock(job_id), keys.state(job_id)

    async def build(w: Write) -> bool:
        pipe = w.pipe
        try:
            await pipe.watch(lock, state_key)
            held: Any = await pipe.exists(lock)
            state: Any = await pipe.hmget(state_key, ["state", "attempt"])
            pipe.multi()  # type: ignore[no-untyped-call]
            queue_answer(rt, w, status)
            current = _text(state[0]) if state[0] is not None else None
            if ends_job and not held and current not in (JobState.RUNNING, JobState.SUCCEEDED):
                attempt = int(_text(state[1])) if state[1] is not None else 0
                job = StatusEvent(job_id=job_id, attempt=attempt, state=JobState.CANCELLED,
                                  detail="cancelled on request before a worker started it")  # fmt: skip
                queue_answer(rt, w, job)
                queue_state(rt, pipe, job)
                pipe.expire(state_key, rt.settings.job_ttl_s)
            queue_ack(w, keys.requests, keys.group, entry_id, inflight=inflight_key(keys))
            await w.execute()
            return True
        except WatchError:
            return False

    async def loop() -> None:
        while not await rt.write(keys.job(job_id), build, what="cancelled-at-pickup answer"):
            pass

    await rt.shielded(loop())


def _entry_job_id(fields: Any) -> str | None:
    """The effective job id of a request-stream entry (its ``job_id`` or the derived one); None
    when the entry holds no valid request."""
    raw = (fields or {}).get(b"request", (fields or {}).get("request"))
    return request_job_id(raw) if raw is not None else None


def _labels(raw: str) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


class CancelLoop:
    """Reads ``<prefix>:cancels`` in the workers' group (and takes over entries a dead worker left)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cancels")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        rt = self._rt
        while not rt.stopping.is_set():
            try:
                await self._once()
            except TRANSIENT as exc:
                log.warning("cancels: redis unavailable (%s)", exc)
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                raise
            except Exception:
                rt.metrics.internal_errors.inc()
                log.exception("cancel handling failed")
                await asyncio.sleep(0.5)

    async def _once(self) -> None:
        rt = self._rt
        keys = rt.keys
        entries: list[tuple[Any, Any]] = []
        claimed: Any = await rt.redis.xautoclaim(
            keys.cancels, keys.group, rt.consumer, _RECLAIM_IDLE_MS, start_id="0-0", count=10
        )
        entries += [(i, f) for i, f in (claimed[1] if claimed else []) if f is not None]
        if not entries:
            reply: Any = await rt.redis.xreadgroup(
                keys.group, rt.consumer, {keys.cancels: ">"}, count=10, block=1000
            )
            for _stream, items in reply or []:
                entries += list(items)
        for raw_id, fields in entries:
            cancel_id = _text(raw_id)
            if await handle_cancel(rt, cancel_id, dict(fields or {})) is None:
                await self._dead(cancel_id, dict(fields or {}))

    async def _dead(self, cancel_id: str, fields: dict[Any, Any]) -> None:
        rt = self._rt
        keys = rt.keys
        dead: Any = {
            "entry_id": cancel_id,
            "deliveries": "1",
            "reason": "invalid cancel: needs job_id ([A-Za-z0-9._-]{1,128}), optional request_id",
            "error_code": "invalid_request",
        }
        for name, value in fields.items():
            dead[f"orig:{_text(name)}"] = value
        maxlen = rt.settings.dead_maxlen

        def ack(pipe: Any) -> None:
            pipe.xack(keys.cancels, keys.group, cancel_id)
            pipe.xdel(keys.cancels, cancel_id)

        with contextlib.suppress(*TRANSIENT):
            await write_shared(
                rt.redis,
                records=[lambda pipe: pipe.xadd(keys.dead, dead, maxlen=maxlen, approximate=True)],
                acks=[ack],
                what="invalid cancel",
                give_up_after_s=0,
            )
