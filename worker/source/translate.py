"""Translation of ADBC / Arrow / Flight exceptions into the worker's error tree, in one place.

ADBC's Flight SQL driver reports the gRPC status code as ``vendor_code`` on errors raised by
calls; errors raised while iterating a result stream arrive as ``OSError`` / ``ArrowException``
whose message names the gRPC code, e.g. ``... (Unavailable; DoGet: endpoint 0: ...)``.
pyarrow.flight (direct tickets, :mod:`worker.source.direct`) raises ``FlightError`` subclasses
for some codes and plain Arrow errors for others (INVALID_ARGUMENT is ``ArrowInvalid``, like an
undecodable stream); a status that came from the server carries gRPC's own spelling in its message
(``... gRPC client debug context: INVALID_ARGUMENT:...``). The string matches on those names live
only in :func:`_grpc_code_from_text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import adbc_driver_manager as adbc
import pyarrow as pa
import pyarrow.flight as fl

from worker.errors import (
    BadSourceData,
    QueryRejected,
    SourceBroken,
    SourceUnavailable,
    TraceWorkerError,
    Unauthenticated,
)

__all__ = ["translate_errors"]

# gRPC status codes (grpc/status.h)
_CANCELLED, _INVALID_ARGUMENT, _DEADLINE, _NOT_FOUND, _PERMISSION = 1, 3, 4, 5, 7
_FAILED_PRECONDITION, _OUT_OF_RANGE, _UNIMPLEMENTED, _UNAVAILABLE, _UNAUTHENTICATED = 9, 11, 12, 14, 16

_CODE_NAMES = {
    "Canceled": _CANCELLED,
    "Cancelled": _CANCELLED,
    "InvalidArgument": _INVALID_ARGUMENT,
    "DeadlineExceeded": _DEADLINE,
    "NotFound": _NOT_FOUND,
    "PermissionDenied": _PERMISSION,
    "FailedPrecondition": _FAILED_PRECONDITION,
    "OutOfRange": _OUT_OF_RANGE,
    "Unimplemented": _UNIMPLEMENTED,
    "Unavailable": _UNAVAILABLE,
    "Unauthenticated": _UNAUTHENTICATED,
}
_CODE_RE = re.compile(r"\((" + "|".join(_CODE_NAMES) + r");")
#: gRPC's names of its codes (grpc/status.h), as Arrow's C++ client quotes them.
_GRPC_NAMES = {
    "CANCELLED": _CANCELLED,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": _INVALID_ARGUMENT,
    "DEADLINE_EXCEEDED": _DEADLINE,
    "NOT_FOUND": _NOT_FOUND,
    "PERMISSION_DENIED": _PERMISSION,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": _FAILED_PRECONDITION,
    "ABORTED": 10,
    "OUT_OF_RANGE": _OUT_OF_RANGE,
    "UNIMPLEMENTED": _UNIMPLEMENTED,
    "INTERNAL": 13,
    "UNAVAILABLE": _UNAVAILABLE,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": _UNAUTHENTICATED,
}
_FLIGHT_CONTEXT = " gRPC client debug context: "
_FLIGHT_CODE_RE = re.compile(re.escape(_FLIGHT_CONTEXT) + r"(" + "|".join(_GRPC_NAMES) + r"):")
#: pyarrow.flight's errors that stand for one gRPC code (FlightInternalError and FlightServerError
#: stand for several).
_FLIGHT_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (fl.FlightUnauthenticatedError, _UNAUTHENTICATED),
    (fl.FlightUnauthorizedError, _PERMISSION),
    (fl.FlightUnavailableError, _UNAVAILABLE),
    (fl.FlightTimedOutError, _DEADLINE),
    (fl.FlightCancelledError, _CANCELLED),
)
_STATUS_TO_GRPC = {
    adbc.AdbcStatusCode.UNAUTHENTICATED: _UNAUTHENTICATED,
    adbc.AdbcStatusCode.UNAUTHORIZED: _PERMISSION,
    adbc.AdbcStatusCode.INVALID_ARGUMENT: _INVALID_ARGUMENT,
    adbc.AdbcStatusCode.NOT_IMPLEMENTED: _UNIMPLEMENTED,
    adbc.AdbcStatusCode.NOT_FOUND: _NOT_FOUND,
    adbc.AdbcStatusCode.TIMEOUT: _DEADLINE,
    adbc.AdbcStatusCode.CANCELLED: _CANCELLED,
}
_REJECTED = {_INVALID_ARGUMENT, _NOT_FOUND, _FAILED_PRECONDITION, _OUT_OF_RANGE, _UNIMPLEMENTED}


def _grpc_code_from_text(message: str) -> int | None:
    match = _FLIGHT_CODE_RE.search(message)
    if match:
        return _GRPC_NAMES[match.group(1)]
    match = _CODE_RE.search(message)
    return _CODE_NAMES[match.group(1)] if match else None


def _grpc_code(exc: BaseException) -> int | None:
    if isinstance(exc, adbc.Error):
        if exc.vendor_code and 0 < exc.vendor_code <= 16:
            return int(exc.vendor_code)
        code = _STATUS_TO_GRPC.get(exc.status_code)
        if code is not None:
            return code
    code = _grpc_code_from_text(str(exc))
    if code is None:
        code = next((c for kind, c in _FLIGHT_ERRORS if isinstance(exc, kind)), None)
    return code


def _short(exc: BaseException) -> str:
    # Arrow's C++ client appends gRPC's debug string (the message again, with the code) and its own
    # context: the message proper comes first.
    text = " ".join(str(exc).split(_FLIGHT_CONTEXT, 1)[0].split())
    return text if len(text) <= 400 else text[:397] + "..."


def classify(exc: BaseException, what: str, *, streaming: bool) -> TraceWorkerError:
    """The worker error for a foreign exception.

    Args:
        exc: What ADBC, Arrow or the OS raised.
        what: The query it happened in, for the message.
        streaming: Whether rows of this query had already arrived: a stream that breaks after
            data flowed is :class:`SourceBroken`, a server that never answered is
            :class:`SourceUnavailable`.
    """
    code = _grpc_code(exc)
    message = f"{what}: {_short(exc)}"
    if code in (_UNAUTHENTICATED, _PERMISSION):
        return Unauthenticated(message)
    if code in _REJECTED:
        return QueryRejected(message)
    if code in (_UNAVAILABLE, _DEADLINE) and not streaming:
        return SourceUnavailable(message)
    if isinstance(exc, adbc.Error):
        if exc.status_code == adbc.AdbcStatusCode.IO and not streaming:
            return SourceUnavailable(message)
        return SourceBroken(message)
    if isinstance(exc, pa.ArrowInvalid | pa.ArrowTypeError | pa.ArrowNotImplementedError) and code is None:
        # Not a transport failure: the stream itself did not decode as Arrow.
        return BadSourceData(message)
    return SourceBroken(message)


@contextmanager
def translate_errors(what: str, *, streaming: bool = False) -> Iterator[None]:
    """Re-raise ADBC / Arrow / OS exceptions as worker errors (``raise ... from exc``).

    Args:
        what: The query being run, for the message.
        streaming: Whether rows of the query have already arrived (see :func:`classify`).
    """
    try:
        yield
    except TraceWorkerError:
        raise
    except (adbc.Error, OSError, pa.ArrowException) as exc:
        raise classify(exc, what, streaming=streaming) from exc
