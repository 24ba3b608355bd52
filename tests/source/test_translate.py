"""The one translation from ADBC / Arrow exceptions to the worker's error tree."""

from __future__ import annotations

from typing import Any

import adbc_driver_manager as adbc
import pyarrow as pa
import pytest

from worker.errors import (
    BadSourceData,
    InvalidRequest,
    QueryRejected,
    SourceBroken,
    SourceUnavailable,
    TraceWorkerError,
    Unauthenticated,
)
from worker.source.translate import translate_errors

S = adbc.AdbcStatusCode
Prog, Oper = adbc.ProgrammingError, adbc.OperationalError


def _adbc(cls: Any, message: str, status: Any, vendor: int | None = None) -> Exception:
    """An ADBC error as the Flight SQL driver raises it (vendor_code = the gRPC status code)."""
    error: Exception = cls(message, status_code=status, vendor_code=vendor)
    return error


UNAVAILABLE = "[FlightSQL] x (Unavailable; DoGet: endpoint 0: [])"


@pytest.mark.parametrize(
    ("exc", "streaming", "expected"),
    [
        (_adbc(Prog, "UNAUTHENTICATED: bad token", S.UNAUTHENTICATED), False, Unauthenticated),
        (_adbc(Prog, "x", S.UNKNOWN, 16), False, Unauthenticated),
        (_adbc(Prog, "INVALID_ARGUMENT: no table", S.INVALID_ARGUMENT), False, QueryRejected),
        (adbc.NotSupportedError("prepared"), False, QueryRejected),
        (_adbc(Oper, "connection refused", S.IO, 14), False, SourceUnavailable),
        (_adbc(Oper, "connection refused", S.IO, 14), True, SourceBroken),
        (_adbc(Oper, "boom", S.UNKNOWN, 2), False, SourceBroken),
        (OSError(UNAVAILABLE), False, SourceUnavailable),
        (OSError(UNAVAILABLE), True, SourceBroken),
        (OSError("query range mandatory (InvalidArgument; DoGet: endpoint 0)"), False, QueryRejected),
        (OSError("[FlightSQL] (Unauthenticated; DoGet: endpoint 0)"), True, Unauthenticated),
        (OSError("stream reset"), True, SourceBroken),
        (pa.ArrowInvalid("Invalid IPC message"), True, BadSourceData),
    ],
)
def test_classification(exc: Exception, streaming: bool, expected: type[TraceWorkerError]) -> None:
    with pytest.raises(expected) as info, translate_errors("some query", streaming=streaming):
        raise exc
    assert info.value.__cause__ is exc
    assert str(info.value).startswith("some query: ")


def test_worker_errors_pass_through() -> None:
    original = InvalidRequest("bad id")
    with pytest.raises(InvalidRequest) as info, translate_errors("q"):
        raise original
    assert info.value is original


def test_other_exceptions_are_not_swallowed() -> None:
    with pytest.raises(KeyError), translate_errors("q"):
        raise KeyError("bug")
