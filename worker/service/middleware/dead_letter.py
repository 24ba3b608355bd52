"""Delivery cap and input checks: entries that cannot or must not run end on ``<prefix>:dead``.

- Over the cap (the worker crashed or lost its lease on every delivery): dead-letter entry and a
  terminal ``dead`` status (TOO_MANY_DELIVERIES) when the job id can be known.
- Unparseable (no ``request`` field, over the size limit, bad JSON, schema errors): dead-letter
  entry and a terminal ``failed`` status (INVALID_REQUEST) when the job id can be known, e.g. a valid
  ``job_id`` inside an otherwise bad request.

Both acknowledge the entry: the worker never crashes on input and never retries it forever.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from pydantic import ValidationError

from contracts.errors import ErrorCode
from contracts.events import StatusEvent
from contracts.request import JOB_ID_PATTERN, TraceRequest
from contracts.states import JobState
from worker.service.delivery import Delivery, Handler, Middleware
from worker.service.finish import ack, finish
from worker.service.runtime import Runtime

__all__ = ["REQUEST_FIELD", "dead_entry", "dead_letter_middleware", "decode_middleware"]

log = logging.getLogger("worker.service")

#: The one field of a request entry.
REQUEST_FIELD = b"request"
_JOB_ID = re.compile(JOB_ID_PATTERN)


def dead_entry(d: Delivery, reason: str, code: ErrorCode, job_id: str | None) -> dict[str, str | bytes]:
    """The dead-letter entry: the original fields under ``orig:<name>``, plus why and how often."""
    out: dict[str, str | bytes] = {
        "entry_id": d.entry_id,
        "deliveries": str(d.deliveries),
        "reason": reason,
        "error_code": code.value,
    }
    if job_id:
        out["job_id"] = job_id
    for name, value in d.fields.items():
        out[f"orig:{name.decode(errors='replace')}"] = value
    return out


def _salvage(raw: bytes | None) -> tuple[str | None, dict[str, str]]:
    """Job id and labels from an invalid request, where they can be known."""
    if raw is None:
        return None, {}
    try:
        obj: Any = json.loads(raw)
    except ValueError:
        return None, {}
    if not isinstance(obj, dict):
        return None, {}
    job_id = obj.get("job_id")
    labels = obj.get("labels")
    good_labels: dict[str, str] = {}
    if isinstance(labels, dict) and len(labels) <= 16:
        good_labels = {str(k)[:64]: v[:256] for k, v in labels.items() if isinstance(v, str)}
    if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id):  # match: `$` passes a final \n
        return job_id, good_labels
    try:
        return TraceRequest.model_validate(obj).effective_job_id(), good_labels
    except ValidationError:
        return None, good_labels


async def _reject(rt: Runtime, d: Delivery, state: JobState, code: ErrorCode, reason: str) -> None:
    job_id, labels = _salvage(d.fields.get(REQUEST_FIELD))
    rt.metrics.dead_letters.labels(code.value).inc()
    log.warning("entry %s dead-lettered (%s): %s", d.entry_id, code.value, reason,
                extra={"entry_id": d.entry_id, "job_id": job_id or ""})  # fmt: skip
    dead = dead_entry(d, reason, code, job_id)
    if job_id is None:
        await ack(rt, d.entry_id, dead)
        return
    status = StatusEvent(job_id=job_id, state=state, labels=labels, error_code=code, message=reason,
                         retryable=state == JobState.DEAD)  # fmt: skip
    written = await finish(rt, entry_id=d.entry_id, status=status, lock_value=None, dead=dead)
    if written:
        rt.metrics.jobs.labels(state.value).inc()


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
            names = ", ".join(sorted(k.decode(errors="replace") for k in d.fields)) or "none"
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
