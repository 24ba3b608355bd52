"""``/api/processes``: processes, their statistics and log lines, from the Flight SQL service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from worker.errors import InvalidRequest
from worker.gateway.models import ErrorOut, LogEntryOut, LogsOut, ProcessListOut, ProcessOut, ProcessStatsOut
from worker.gateway.runtime import GatewayRuntime
from worker.source.queries import LOG_LEVELS, MAX_SEARCH

__all__ = ["router"]

router = APIRouter(prefix="/api/processes", tags=["processes"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut, "description": "bad parameter (code invalid_request)"},
    404: {"model": ErrorOut, "description": "unknown process (code process_not_found)"},
    503: {"model": ErrorOut, "description": "Flight SQL service unreachable (code source_unavailable)"},
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_LIMIT = datetime(2262, 4, 11, tzinfo=UTC)


def _rt(request: Request) -> GatewayRuntime:
    rt: GatewayRuntime = request.app.state.runtime
    return rt


@router.get("", response_model=ProcessListOut, responses=_ERRORS, summary="List processes, newest first")
async def list_processes(
    request: Request,
    search: Annotated[str | None, Query(max_length=MAX_SEARCH, description="id or exe contains it")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ProcessListOut:
    """Processes known to the analytics service, newest first, filtered by a case-insensitive
    search over id and exe."""
    found = await _rt(request).catalog.processes(search=search, limit=limit + 1, offset=offset)
    return ProcessListOut(
        items=[ProcessOut.of(p) for p in found[:limit]],
        search=search or None,
        limit=limit,
        offset=offset,
        has_more=len(found) > limit,
    )


@router.get("/{process_id}", response_model=ProcessStatsOut, responses=_ERRORS, summary="Process statistics")
async def process_stats(request: Request, process_id: str) -> ProcessStatsOut:
    """Threads, thread span, async span and log entry counts over the process's recorded range."""
    return ProcessStatsOut.of(await _rt(request).catalog.stats(process_id))


@router.get(
    "/{process_id}/logs", response_model=LogsOut, responses=_ERRORS, summary="Log entries, newest first"
)
async def process_logs(  # noqa: PLR0917 - query parameters
    request: Request,
    process_id: str,
    begin: Annotated[
        datetime | None, Query(description="RFC 3339 with an offset; default: process start")
    ] = None,
    end: Annotated[
        datetime | None, Query(description="RFC 3339 with an offset; default: process end")
    ] = None,
    level: Annotated[
        str | None,
        Query(description="most verbose level kept: 1-6 or fatal, error, warn, info, debug, trace"),
    ] = None,
    search: Annotated[str | None, Query(max_length=MAX_SEARCH, description="message contains it")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> LogsOut:
    """Log lines of the process in ``[begin, end]``, newest first."""
    entries = await _rt(request).catalog.log_entries(
        process_id,
        begin_ns=_ns(begin, "begin"),
        end_ns=_ns(end, "end"),
        max_level=_level(level),
        search=search,
        limit=limit,
    )
    return LogsOut(process_id=process_id.lower(), items=[LogEntryOut.of(e) for e in entries])


def _ns(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if value.utcoffset() is None:
        raise InvalidRequest(f"{name} needs an offset, e.g. 2026-11-26T10:00:00Z")
    if not _EPOCH <= value < _NS_LIMIT:  # what int64 nanoseconds since 1970 can hold
        raise InvalidRequest(f"{name} must be between 1970-01-01T00:00:00Z and 2262-04-11T00:00:00Z")
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def _level(value: str | None) -> int:
    if value is None or value == "":
        return 6
    text = value.strip().lower()
    if text.isdigit() and 1 <= int(text) <= 6:
        return int(text)
    if text in LOG_LEVELS:
        return LOG_LEVELS.index(text) + 1
    if text == "warning":
        return 3
    raise InvalidRequest(f"level must be 1-6 or one of {', '.join(LOG_LEVELS)}: {value!r:.40}")
