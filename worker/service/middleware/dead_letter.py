"""Delivery cap and input checks: entries that cannot or must not run end on ``<prefix>:dead``.

- Over the cap (the worker crashed or lost its lease on every delivery): dead-letter entry and a
  terminal ``dead`` status (TOO_MANY_DELIVERIES) when the job id can be known.
- Unparseable (no ``request`` field, over the size limit, bad JSON, schema errors): dead-letter
  entry and a terminal ``failed`` status (INVALID_REQUEST) when the job id can be known, e.g. a valid
  ``job_id`` inside an otherwise bad request.

- Poison (an unexpected, non-transient failure anywhere in the delivery, e.g. WRONGTYPE because a
  job key holds the wrong Redis type): dead-lettered at once by :func:`poison_handler`, since a
  retry would fail the same way; only a transient Redis error leaves the entry pending.

All acknowledge the entry: the worker never crashes on input and never retries it forever. The
dead-letter step itself never fails on input: salvaging the job id cannot raise (deep JSON
nesting included), a status that cannot be written (a job key of the wrong type) falls back to the
dead letter alone, and a dead-letter stream that cannot be written to falls back to the XACK alone.
The dead-letter entry is bounded (:func:`dead_entry`), whatever the original entry held.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from contracts.errors import ErrorCode
from contracts.events import StatusEvent
from contracts.request import JOB_ID_PATTERN, MAX_LABELS, MAX_REQUEST_BYTES, TraceRequest, label_problem
from contracts.states import JobState
from worker.service.delivery import Delivery, Handler, Middleware, pending_info
from worker.service.finish import ack, answer_invalid, finish
from worker.service.redis_io import TRANSIENT
from worker.service.runtime import Runtime

__all__ = [
    "DEAD_FIELDS_MAX",
    "DEAD_ORIG_BYTES_MAX",
    "REQUEST_FIELD",
    "dead_entry",
    "dead_letter_middleware",
    "decode_middleware",
    "poison_handler",
]

log = logging.getLogger("worker.service")

#: The one field of a request entry.
REQUEST_FIELD = b"request"
_JOB_ID = re.compile(JOB_ID_PATTERN)
#: Bytes of original field values (names included) copied into one dead-letter entry: a request
#: at the size limit fits whole; anything past it is cut (``truncated`` says what was dropped).
DEAD_ORIG_BYTES_MAX = MAX_REQUEST_BYTES + 1024
#: Original fields copied into one dead-letter entry.
DEAD_FIELDS_MAX = 16
#: Longest field name and reason text kept (characters).
_NAME_MAX = 64
_REASON_MAX = 1024
#: Largest invalid `request` read for its job id (bigger ones are not parsed at all).
_SALVAGE_MAX = 4 * MAX_REQUEST_BYTES
#: At most one traceback per this many seconds for poison entries (each still gets one line).
_TRACEBACK_EVERY_S = 60.0


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dead_entry(d: Delivery, reason: str, code: ErrorCode, job_id: str | None) -> dict[str, str | bytes]:
    """The dead-letter entry: the original fields under ``orig:<name>``, plus why and how often.

    Bounded whatever the entry held: at most :data:`DEAD_FIELDS_MAX` original fields, names cut to
    64 characters and values to :data:`DEAD_ORIG_BYTES_MAX` bytes in all; ``truncated`` then lists
    ``<name>=<original size>`` of what was cut or dropped.
    """
    out: dict[str, str | bytes] = {
        "entry_id": d.entry_id,
        "deliveries": str(d.deliveries),
        "reason": _clip(reason, _REASON_MAX),
        "error_code": code.value,
    }
    if job_id:
        out["job_id"] = job_id
    budget = DEAD_ORIG_BYTES_MAX
    cut: list[str] = []
    for i, (name, value) in enumerate(d.fields.items()):
        text = _clip(name.decode(errors="replace"), _NAME_MAX)
        if i >= DEAD_FIELDS_MAX or budget <= 0:
            cut.append(f"{text}={len(value)}")
            continue
        kept = value[: max(0, budget - len(text))]
        budget -= len(text) + len(kept)
        out[f"orig:{text}"] = kept
        if len(kept) < len(value):
            cut.append(f"{text}={len(value)}")
    if cut:
        extra = len(cut) - 8
        out["truncated"] = ", ".join(cut[:8]) + (f" and {extra} more fields" if extra > 0 else "")
    return out


#: The request fields the derived job id depends on (:meth:`TraceRequest.canonical`).
_ID_FIELDS = ("process_id", "begin", "end", "span_types", "chunks", "logs", "metrics")


def _salvage(raw: bytes | None) -> tuple[str | None, dict[str, str]]:
    """Job id and valid labels from an invalid request, where they can be known. Never raises."""
    if raw is None or len(raw) > _SALVAGE_MAX:
        return None, {}
    try:
        obj: Any = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: e.g. 3,000 nested `[`
        return None, {}
    if not isinstance(obj, dict):
        return None, {}
    job_id = obj.get("job_id")
    labels = obj.get("labels")
    good_labels: dict[str, str] = {}
    if isinstance(labels, dict) and len(labels) <= MAX_LABELS:
        # Only labels a valid request could carry are echoed (no control or bidi characters).
        good_labels = {k: v for k, v in labels.items() if label_problem(k, v) is None}
    if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id):  # match: `$` passes a final \n
        return job_id, good_labels
    if job_id is not None:
        return None, good_labels  # a bad explicit job_id names no job
    try:
        # Only the fields the derived id depends on (PROTOCOL §1): a bad label, `v` or `max_age_s`
        # does not hide the job the requester follows.
        ids = {k: obj[k] for k in _ID_FIELDS if k in obj}
        return TraceRequest.model_validate(ids).effective_job_id(), good_labels
    except (ValidationError, ValueError, RecursionError):
        return None, good_labels


async def _still_pending(rt: Runtime, entry_id: str) -> bool:
    owner, _ = await pending_info(rt, entry_id)
    return owner is not None


async def _reject(rt: Runtime, d: Delivery, state: JobState, code: ErrorCode, reason: str) -> None:
    job_id, labels = _salvage(d.fields.get(REQUEST_FIELD))
    rt.metrics.dead_letters.labels(code.value).inc()
    log.warning("entry %s dead-lettered (%s): %s", d.entry_id, code.value, _clip(reason, 300),
                extra={"entry_id": d.entry_id, "job_id": job_id or ""})  # fmt: skip
    dead = dead_entry(d, reason, code, job_id)
    if job_id is not None:
        status = StatusEvent(
            job_id=job_id,
            state=state,
            labels=labels,
            error_code=code,
            message=_clip(reason, _REASON_MAX),
            retryable=state == JobState.DEAD,
            request_id=d.entry_id,
        )
        try:
            if state == JobState.FAILED:
                # Answered on its job's stream, where the requester looks; a job that exists is
                # left alone (docs/PROTOCOL.md §9).
                await answer_invalid(rt, d.entry_id, status, dead)
                written = True
            else:
                written = await finish(rt, entry_id=d.entry_id, status=status, lock_value=None, dead=dead)
        except ResponseError as exc:
            # A job key of the wrong type (e.g. a stream where the state hash goes): no status can
            # be written for this job; the dead letter below still answers the entry.
            log.warning("entry %s: no status for job %s (%s); dead letter only", d.entry_id, job_id,
                        _clip(str(exc), 200))  # fmt: skip
            if not await _still_pending(rt, d.entry_id):
                return  # the MULTI ran its other commands (dead letter, XACK) before failing
        else:
            if written:
                rt.metrics.jobs.labels(state.value).inc()
            return
    try:
        await ack(rt, d.entry_id, dead)
    except ResponseError as exc:
        # The dead-letter stream itself cannot be written (not a stream): acknowledge anyway, so
        # the entry is not delivered for ever; the log line above is then its only record.
        log.error("entry %s: dead-letter stream unusable (%s); acknowledged without a dead letter",
                  d.entry_id, _clip(str(exc), 200))  # fmt: skip
        if await _still_pending(rt, d.entry_id):
            await ack(rt, d.entry_id, None)


#: Redis refusals that pass (memory full, a failover under way): the entry waits, it is not poison.
_PASSING_REFUSALS = ("OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "BUSY ")


def _passing(exc: Exception) -> bool:
    if isinstance(exc, (*TRANSIENT, OutOfMemoryError, ReadOnlyError)):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_PASSING_REFUSALS)


def poison_handler(rt: Runtime) -> Callable[[Delivery, Exception], Awaitable[None]]:
    """What the dispatcher does with a delivery that failed unexpectedly.

    A transient Redis error, or a refusal that passes (OOM, READONLY during a failover, ...), leaves
    the entry pending (reclaimed later, counted against ``max_deliveries``): dead-lettering it then
    could lose it, as the dead-letter write would be refused too. Anything else would fail the same
    way on every delivery, so the entry is dead-lettered now: ``failed`` with ``internal`` when its
    job id can be known. Tracebacks are logged at most once a minute; every such entry still gets
    its one warning line.
    """
    last_traceback = [-_TRACEBACK_EVERY_S]

    async def on_failure(d: Delivery, exc: Exception) -> None:
        rt.metrics.internal_errors.inc()
        if _passing(exc):
            log.warning("delivery %s: redis unavailable (%s); left pending", d.entry_id, _clip(str(exc), 200))
            return
        now = time.monotonic()
        if now - last_traceback[0] >= _TRACEBACK_EVERY_S:
            last_traceback[0] = now
            log.error("delivery %s failed unexpectedly", d.entry_id, exc_info=exc)
        reason = (
            f"failed unexpectedly ({type(exc).__name__}: {_clip(str(exc), 200)}); dead-lettered at "
            "once, as every delivery would fail the same way"
        )
        await _reject(rt, d, JobState.FAILED, ErrorCode.INTERNAL, reason)

    return on_failure


def dead_letter_middleware(rt: Runtime) -> Middleware:
    """Dead-letter entries delivered more than ``max_deliveries`` times."""

    async def step(d: Delivery, nxt: Handler) -> None:
        cap = rt.settings.max_deliveries
        if d.deliveries > cap:
            reason = (
                f"delivered {d.deliveries} times (max_deliveries={cap}): the worker crashed or lost "
                "its lease on every delivery; check the worker logs for this job"
            )
            await _reject(rt, d, JobState.DEAD, ErrorCode.TOO_MANY_DELIVERIES, reason)
            return
        await nxt(d)

    return step


def decode_middleware(rt: Runtime) -> Middleware:
    """Parse and validate the request; invalid ones are answered and dead-lettered, never retried."""

    async def step(d: Delivery, nxt: Handler) -> None:
        raw = d.fields.get(REQUEST_FIELD)
        limit = rt.settings.max_request_bytes
        reason: str | None = None
        if raw is None:
            names = ", ".join(sorted(_clip(k.decode(errors="replace"), _NAME_MAX) for k in d.fields)[:8])
            names = names or "none"
            reason = f"the entry has no `request` field (fields: {names})"
        elif len(raw) > limit:
            reason = f"the request is {len(raw)} bytes; the limit is {limit} (max_request_bytes)"
        else:
            try:
                d.extra["request"] = TraceRequest.model_validate_json(raw)
            except ValidationError as exc:
                reason = "invalid request: " + _describe(exc)
        if reason is not None:
            await _reject(rt, d, JobState.FAILED, ErrorCode.INVALID_REQUEST, reason)
            return
        await nxt(d)

    return step


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)
