"""``/api/traces``: submit a trace request, follow its job, download the trace, cancel.

Everything goes through the client library (:mod:`contracts.client`), as for any requester: the
gateway never talks to a worker directly and never builds a trace itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from redis.exceptions import RedisError
from starlette.background import BackgroundTask

from contracts.client import ClientError, JobFailed, JobHandle, TraceIntegrityError
from contracts.events import CancelOutcome, ProgressEvent, StatusEvent
from contracts.request import TraceRequest
from contracts.states import JobState
from worker.gateway.errors import ApiError
from worker.gateway.models import ErrorOut, JobAccepted, job_links
from worker.gateway.runtime import GatewayRuntime

__all__ = ["router"]

router = APIRouter(prefix="/api/traces", tags=["traces"])

#: The state of a job submitted through this gateway that no worker has reported on yet.
SUBMITTED = "submitted"
#: Seconds between SSE comment lines while a job is silent (keeps proxies from closing the stream).
KEEPALIVE_S = 15.0


def _rt(request: Request) -> GatewayRuntime:
    rt: GatewayRuntime = request.app.state.runtime
    return rt


def _redis_down(exc: BaseException) -> ApiError:
    return ApiError(503, "redis_unavailable", f"Redis did not answer: {exc}", retryable=True)


def _status_json(status: StatusEvent) -> dict[str, Any]:
    out = status.model_dump(mode="json", exclude_none=True)
    out["links"] = job_links(status.job_id).model_dump()
    return out


async def _known(rt: GatewayRuntime, job_id: str) -> tuple[JobHandle, StatusEvent | None]:
    """The job's handle and latest status; 404 when neither Redis nor this gateway knows it."""
    try:
        handle = rt.handles.get(job_id)
    except ValueError as exc:  # the client's InvalidJobId: no job can have this id
        raise ApiError(404, "job_not_found", str(exc)) from exc
    try:
        status = await handle.state()
    except (ClientError, RedisError, OSError) as exc:
        raise _redis_down(exc) from exc
    if status is None and not rt.handles.submitted_here(job_id):
        raise ApiError(404, "job_not_found", f"no job {job_id!r} (unknown, or expired after the job TTL)")
    return handle, status


_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown job (code job_not_found)"},
    503: {"model": ErrorOut, "description": "Redis unreachable (code redis_unavailable)"},
}


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses={
        413: {"model": ErrorOut, "description": "body too large (code request_too_large)"},
        422: {"model": ErrorOut, "description": "not a valid trace request (code invalid_request)"},
        503: {"model": ErrorOut, "description": "Redis unreachable (code redis_unavailable)"},
    },
    summary="Request a trace",
)
async def submit(request: Request, response: Response, body: TraceRequest) -> JobAccepted:
    """Put a trace request (docs/PROTOCOL.md) on the request stream; answer at once with the job id.

    Identical requests share a job (the id derives from the request unless ``job_id`` is given).
    """
    rt = _rt(request)
    try:
        handle = await rt.client.submit(body)
    except ValueError as exc:
        raise ApiError(413, "request_too_large", str(exc)) from exc
    except ClientError as exc:
        raise _redis_down(exc) from exc
    rt.handles.remember(handle)
    rt.metrics.submitted.inc()
    try:
        status = await handle.state()
    except (RedisError, OSError):
        status = None
    links = job_links(handle.job_id)
    response.headers["Location"] = links.self
    return JobAccepted(
        job_id=handle.job_id,
        # A terminal state here is an earlier run's: this request is answered after a worker picks it up.
        state=SUBMITTED if status is None else "queued" if status.state.terminal else status.state.value,
        request=json.loads(body.to_json()),
        links=links,
    )


@router.get("", summary="Recent jobs, newest first")
async def recent(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
    """Latest status of the most recently active jobs (from the events stream)."""
    try:
        jobs = await _rt(request).client.recent_jobs(limit)
    except (RedisError, OSError) as exc:
        raise _redis_down(exc) from exc
    return {"items": [_status_json(s) for s in jobs]}


@router.get("/{job_id}", responses=_JOB_ERRORS, summary="A job's state")
async def state(request: Request, job_id: str) -> dict[str, Any]:
    """The job's latest status (the state hash): state, attempt, and when done size, sha256, spans,
    or the error code and message. ``queued`` while its request waits on the request stream;
    ``submitted`` when this gateway submitted it and Redis knows nothing yet."""
    _, status = await _known(_rt(request), job_id)
    if status is None:
        return {"job_id": job_id, "state": SUBMITTED, "links": job_links(job_id).model_dump()}
    return _status_json(status)


@router.get(
    "/{job_id}/events",
    responses={
        **_JOB_ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "event stream"},
        204: {"description": "a reconnect with Last-Event-ID: end (the job's events were all sent)"},
    },
    summary="Server-Sent Events of a job until it ends",
)
async def events(
    request: Request, job_id: str, last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None
) -> Response:
    """``text/event-stream``: one ``status`` or ``progress`` event per entry of the job's stream
    (``data`` is the entry as JSON), from the job's start to its terminal status; then the stream
    ends. A job whose request still waits for a worker starts with a ``status`` event of its state
    now (``queued``, or ``submitted`` when Redis knows nothing yet; with the request's labels when
    this gateway submitted it), as ``GET /api/traces/{job_id}`` gives it. A broken Redis connection
    ends it with an ``error`` event.

    After the terminal event a frame ``id: end`` (no data: not an event) follows. An EventSource
    reconnects whenever a stream ends; its reconnect then carries ``Last-Event-ID: end`` and is
    answered 204, which stops it (no replay for ever). A reconnect after a cut mid-way (no
    ``Last-Event-ID``) gets the job's events from the start again."""
    if last_event_id is not None and last_event_id.strip() == _END_ID:
        return Response(status_code=204)
    rt = _rt(request)
    handle, status = await _known(rt, job_id)
    rt.check_capacity()
    first = None
    labels = handle.request.labels if handle.request is not None else None
    if status is None:
        first = {"job_id": job_id, "attempt": 0, "type": "status", "state": SUBMITTED}
    elif status.state == JobState.QUEUED:
        first = status.model_dump(mode="json", exclude_none=True)
    if first is not None and labels:
        first["labels"] = labels
    return StreamingResponse(
        _sse(rt, handle, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


#: The ``id:`` of the frame after a job's last event: a reconnect naming it gets 204 (no replay).
_END_ID = "end"


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _sse(rt: GatewayRuntime, handle: JobHandle, first: dict[str, Any] | None) -> AsyncIterator[bytes]:
    with rt.stream_slot():
        yield b"retry: 3000\n\n"
        if first is not None:  # nothing is on the job's stream yet while its request waits
            yield _frame("status", first)
        source = handle.events()
        try:
            pending: asyncio.Task[StatusEvent | ProgressEvent] | None = None
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(source))
                done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
                if not done:
                    yield b": keepalive\n\n"
                    continue
                task, pending = pending, None
                try:
                    event = task.result()
                except StopAsyncIteration:
                    yield f"id: {_END_ID}\n\n".encode()  # no data: not an event, sets lastEventId
                    return
                yield _frame(event.type, event.model_dump(mode="json", exclude_none=True))
        except (ClientError, RedisError, OSError) as exc:
            yield _frame("error", {"code": "redis_unavailable", "message": str(exc), "retryable": True})
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                # Not suppress(BaseException): a cancellation of this response must get through.
                await asyncio.gather(pending, return_exceptions=True)
            await source.aclose()


@router.get(
    "/{job_id}/trace",
    response_class=FileResponse,
    responses={
        **_JOB_ERRORS,
        200: {"content": {"application/octet-stream": {}}, "description": "the trace file"},
        409: {
            "model": ErrorOut,
            "description": "not finished (job_not_finished), or failed (the job's code)",
        },
        504: {"model": ErrorOut, "description": "bytes did not arrive in time (download_timeout)"},
    },
    summary="Download the trace",
)
async def trace(request: Request, job_id: str) -> Response:
    """The trace file of a succeeded job: ``Content-Length`` = size, ``ETag`` = its sha256 (verified
    before the first byte is sent), ``Content-Disposition: attachment; filename=<job>.pftrace``.
    ``If-None-Match`` naming that ETag (weak ``W/"..."`` too, or ``*``) answers 304."""
    rt = _rt(request)
    handle, status = await _known(rt, job_id)
    if status is None or not status.state.terminal:
        now = status.state.value if status is not None else SUBMITTED
        raise ApiError(409, "job_not_finished", f"job {job_id} is {now}; follow {job_links(job_id).events}")
    if status.state != JobState.SUCCEEDED:
        code = status.error_code.value if status.error_code else status.state.value
        raise ApiError(
            409,
            code,
            f"job {job_id} ended {status.state.value}: {status.message or status.detail or ''}".rstrip(": "),
        )
    etag = f'"{status.sha256}"'
    if _none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    rt.check_capacity()
    with rt.stream_slot():
        path = await _fetch(rt, handle)
    rt.metrics.downloaded.inc(status.size or 0)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{job_id}.pftrace",
        headers={"ETag": etag, "Cache-Control": "private, max-age=0"},
        background=BackgroundTask(_remove, path),
    )


def _none_match(header: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``: a list of entity tags or ``*``, compared weakly
    (RFC 9110 §13.1.2: ``W/"x"`` matches ``"x"``)."""
    if header is None:
        return False
    return any(tag.strip() == "*" or tag.strip().removeprefix("W/") == etag for tag in header.split(","))


async def _fetch(rt: GatewayRuntime, handle: JobHandle) -> Path:
    """The verified trace in a temporary file (the client checks size and sha256)."""
    fd, name = tempfile.mkstemp(prefix="trace-gateway-", suffix=".pftrace")
    os.close(fd)
    path = Path(name)
    try:
        await handle.download(path, timeout=rt.settings.gateway_download_timeout_s)
    except TimeoutError as exc:
        _remove(path)
        raise ApiError(
            504,
            "download_timeout",
            f"the trace did not arrive within {rt.settings.gateway_download_timeout_s:g} s",
        ) from exc
    except JobFailed as exc:
        _remove(path)
        s = exc.status
        raise ApiError(409, s.error_code.value if s.error_code else s.state.value, str(exc)) from exc
    except TraceIntegrityError as exc:
        _remove(path)
        raise ApiError(502, "internal", f"the trace failed verification: {exc}", retryable=True) from exc
    except (ClientError, RedisError, OSError) as exc:
        _remove(path)
        raise _redis_down(exc) from exc
    except BaseException:
        _remove(path)
        raise
    return path


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@router.delete(
    "/{job_id}",
    status_code=202,
    responses={**_JOB_ERRORS, 409: {"model": ErrorOut, "description": "already ended (job_finished)"}},
    summary="Cancel a job",
)
async def cancel(request: Request, job_id: str) -> dict[str, Any]:
    """Cancel this gateway's request for the job (or, for a job submitted elsewhere, the job).

    ``outcome`` is the worker's answer (PROTOCOL §5; null when none came within 10 s):
    ``cancelled`` (the job stops and ends ``cancelled``), ``pending`` (answered ``cancelled`` when
    picked up), ``detached`` (other requests want the job: it goes on for them, and this
    gateway's routes then report the job's own state and end, e.g. ``succeeded``), ``not_found``
    or ``already_ended``."""
    rt = _rt(request)
    handle, status = await _known(rt, job_id)
    if status is not None and status.state.terminal:
        raise ApiError(409, "job_finished", f"job {job_id} already ended {status.state.value}")
    try:
        ack = await handle.cancel()
    except (ClientError, RedisError, OSError) as exc:
        raise _redis_down(exc) from exc
    if ack is not None and ack.outcome == CancelOutcome.DETACHED:
        rt.handles.detach(job_id)
    return {
        "job_id": job_id,
        "cancel_requested": True,
        "outcome": ack.outcome.value if ack is not None else None,
        "links": job_links(job_id).model_dump(),
    }
