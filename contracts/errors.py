"""Failure reasons a requester can see (`error_code` on failed/dead status events)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode"]


class ErrorCode(StrEnum):
    """Wire-visible error codes. `retryable` tells a requester whether resubmitting may help."""

    #: The request entry is not valid JSON or breaks the request schema.
    INVALID_REQUEST = "invalid_request"
    #: The job id is taken by a different request (running or succeeded); choose another job id.
    JOB_ID_CONFLICT = "job_id_conflict"
    #: The analytics service does not know the process.
    PROCESS_NOT_FOUND = "process_not_found"
    #: The process has no spans of the requested types in the requested range.
    EMPTY_RANGE = "empty_range"
    #: The time range is longer than the configured maximum.
    RANGE_TOO_LONG = "range_too_long"
    #: The trace would exceed the configured maximum spans or bytes.
    TRACE_TOO_LARGE = "trace_too_large"
    #: The analytics service refused our credentials.
    UNAUTHENTICATED = "unauthenticated"
    #: The analytics service rejected a query (schema or version mismatch).
    QUERY_REJECTED = "query_rejected"
    #: The analytics service could not be reached.
    SOURCE_UNAVAILABLE = "source_unavailable"
    #: The analytics service stream broke mid-way.
    SOURCE_BROKEN = "source_broken"
    #: The analytics service sent data the worker cannot use (wrong types, missing columns).
    BAD_SOURCE_DATA = "bad_source_data"
    #: Writing the trace object failed.
    BLOB_STORE_ERROR = "blob_store_error"
    #: The job exceeded the configured maximum run time.
    TIMEOUT = "timeout"
    #: The job was delivered more times than allowed (worker crashes or repeated transient errors).
    TOO_MANY_DELIVERIES = "too_many_deliveries"
    #: A bug in the worker; the message says what happened.
    INTERNAL = "internal"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorCode.SOURCE_UNAVAILABLE,
        ErrorCode.SOURCE_BROKEN,
        ErrorCode.BLOB_STORE_ERROR,
        ErrorCode.TIMEOUT,
        ErrorCode.TOO_MANY_DELIVERIES,
        ErrorCode.INTERNAL,
    }
)
