"""Errors as JSON: ``{"error": {"code": ..., "message": ..., "retryable": ...}}``.

Codes are the wire contract's :class:`~contracts.errors.ErrorCode` values wherever one fits
(``invalid_request``, ``process_not_found``, ``source_unavailable``, a failed job's own code, ...),
plus a few that only HTTP has (:data:`GATEWAY_CODES`), each with a fixed status.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from contracts.errors import ErrorCode
from worker.errors import TraceWorkerError

__all__ = ["GATEWAY_CODES", "ApiError", "error_body", "install_handlers", "status_of"]

#: Codes only the gateway uses, with their HTTP status.
GATEWAY_CODES: dict[str, int] = {
    "cors_refused": 400,
    "unauthorized": 401,
    "not_found": 404,
    "job_not_found": 404,
    "method_not_allowed": 405,
    "job_not_finished": 409,
    "job_finished": 409,
    "request_too_large": 413,
    "too_many_streams": 429,
    "redis_unavailable": 503,
    "download_timeout": 504,
}

#: HTTP status of errors that carry a contract code (a failed job's code is 409 on its download).
_CONTRACT_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.PROCESS_NOT_FOUND: 404,
    ErrorCode.RANGE_TOO_LONG: 400,
    ErrorCode.EMPTY_RANGE: 404,
    ErrorCode.UNAUTHENTICATED: 502,
    ErrorCode.QUERY_REJECTED: 502,
    ErrorCode.BAD_SOURCE_DATA: 502,
    ErrorCode.SOURCE_BROKEN: 502,
    ErrorCode.SOURCE_UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


def status_of(code: ErrorCode) -> int:
    """The HTTP status of an error raised with a contract code (500 when none is specific)."""
    return _CONTRACT_STATUS.get(code, 500)


class ApiError(Exception):
    """An error answer: ``status``, a ``code`` (contract or gateway) and a message a person can act on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.headers = headers


def error_body(code: str, message: str, retryable: bool = False, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": {"code": code, "message": message, "retryable": retryable, **extra}}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        text = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {text}" if where else text)
    return "; ".join(parts) or "invalid request"


def install_handlers(app: FastAPI) -> None:
    """Every error of the app answers with :func:`error_body`."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.retryable), exc.status, headers=exc.headers)

    @app.exception_handler(TraceWorkerError)
    async def _worker(_: Request, exc: TraceWorkerError) -> JSONResponse:
        return JSONResponse(error_body(exc.code.value, str(exc), exc.retryable), status_of(exc.code))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(ErrorCode.INVALID_REQUEST.value, _validation_message(exc)), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
            exc.status_code, "invalid_request"
        )
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)
