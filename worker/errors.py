"""The worker's error tree. Every class carries the wire ErrorCode a requester will see.

    TraceWorkerError
    ├── PermanentError          retrying the same request cannot help
    │   ├── InvalidRequest      INVALID_REQUEST
    │   ├── ProcessNotFound     PROCESS_NOT_FOUND
    │   ├── EmptyRange          EMPTY_RANGE
    │   ├── RangeTooLong        RANGE_TOO_LONG
    │   ├── TraceTooLarge       TRACE_TOO_LARGE
    │   ├── Unauthenticated     UNAUTHENTICATED
    │   ├── QueryRejected       QUERY_REJECTED
    │   └── BadSourceData       BAD_SOURCE_DATA
    └── RetryableError          may succeed later
        ├── SourceUnavailable   SOURCE_UNAVAILABLE
        ├── SourceBroken        SOURCE_BROKEN
        └── BlobStoreError      BLOB_STORE_ERROR
            └── BlobStoreRefused BLOB_STORE_ERROR, not retried by the worker (permission, no bucket...)

Foreign exceptions (ADBC, Flight, obstore, redis) are translated at the edge that calls them,
with ``raise ... from exc``.
"""

from __future__ import annotations

from contracts.errors import ErrorCode

__all__ = [
    "BadSourceData",
    "BlobStoreError",
    "BlobStoreRefused",
    "EmptyRange",
    "InvalidRequest",
    "PermanentError",
    "ProcessNotFound",
    "QueryRejected",
    "RangeTooLong",
    "RetryableError",
    "SourceBroken",
    "SourceUnavailable",
    "TraceTooLarge",
    "TraceWorkerError",
    "Unauthenticated",
]


class TraceWorkerError(Exception):
    """Base of every error the worker reports to a requester."""

    code: ErrorCode = ErrorCode.INTERNAL

    @property
    def retryable(self) -> bool:
        return self.code.retryable


class PermanentError(TraceWorkerError):
    """Retrying the same request cannot help."""


class RetryableError(TraceWorkerError):
    """A transient failure: the same request may succeed later."""


class InvalidRequest(PermanentError):
    code = ErrorCode.INVALID_REQUEST


class ProcessNotFound(PermanentError):
    code = ErrorCode.PROCESS_NOT_FOUND


class EmptyRange(PermanentError):
    code = ErrorCode.EMPTY_RANGE


class RangeTooLong(PermanentError):
    code = ErrorCode.RANGE_TOO_LONG


class TraceTooLarge(PermanentError):
    code = ErrorCode.TRACE_TOO_LARGE


class Unauthenticated(PermanentError):
    code = ErrorCode.UNAUTHENTICATED


class QueryRejected(PermanentError):
    code = ErrorCode.QUERY_REJECTED


class BadSourceData(PermanentError):
    code = ErrorCode.BAD_SOURCE_DATA


class SourceUnavailable(RetryableError):
    code = ErrorCode.SOURCE_UNAVAILABLE


class SourceBroken(RetryableError):
    code = ErrorCode.SOURCE_BROKEN


class BlobStoreError(RetryableError):
    code = ErrorCode.BLOB_STORE_ERROR


class BlobStoreRefused(BlobStoreError):
    """The store refuses writes for good (permission denied, missing bucket, read-only file system,
    a file where a folder should be): the worker fails the job at once instead of retrying (each
    retry would compute the trace again to fail the same way). Same wire code, still
    ``retryable``: a resubmission succeeds once the store is fixed.
    """
