"""The gateway's FastAPI application: the API routers, the page, health, metrics and limits.

    app = create_app(Settings())          # uvicorn.run(app, host=..., port=...)

The lifespan opens one :class:`~contracts.client.TraceClient` (Redis) and one
:class:`~worker.source.FlightSqlSource` (analytics service) and closes both on shutdown.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.client import TraceClient
from worker import __version__
from worker.gateway import processes, traces
from worker.gateway.errors import error_body, install_handlers
from worker.gateway.runtime import GatewayRuntime, Handles
from worker.settings import Settings
from worker.source.catalog import Catalog
from worker.source.config import FlightSqlConfig
from worker.source.flightsql import FlightSqlSource

__all__ = ["create_app"]

#: Bound of each readiness probe.
PROBE_TIMEOUT_S = 3.0


def build_runtime(settings: Settings) -> GatewayRuntime:
    """The client library, the Flight SQL source and the catalog for these settings."""
    url = settings.redis_url_with_credentials()
    client = TraceClient(
        url, settings.key_prefix, client_name="trace-gateway", cluster=settings.redis_cluster
    )
    source = FlightSqlSource(FlightSqlConfig.from_settings(settings))
    return GatewayRuntime(
        settings=settings,
        client=client,
        source=source,
        catalog=Catalog(source, concurrency=settings.flightsql_concurrency),
        handles=Handles(client),
    )


class BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes get 413 (by Content-Length, or while read)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self.limit)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = error_body("request_too_large", f"request bodies are limited to {self.limit} bytes")
        await JSONResponse(body, 413)({"type": "http"}, _no_receive, send)


class _TooLarge(StarletteHTTPException):
    """Raised by the counting ``receive``: an HTTPException, so that FastAPI's body parser re-raises
    it (any other exception there becomes 400 "error parsing the body"); answered 413 either way."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request bodies are limited to {limit} bytes")


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class TokenCheck:
    """ASGI middleware: ``/api`` calls need ``Authorization: Bearer <token>`` when a token is set.

    Runs before routing, so an unauthenticated request gets 401 before its body is read, parsed or
    validated (and before any size check). CORS preflights (answered by the CORS middleware
    outside this one) need no token.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_api(scope["path"]) or self._valid(scope):
            await self.app(scope, receive, send)
            return
        body = error_body(
            "unauthorized", "this gateway needs Authorization: Bearer <token> (TRACE_WORKER_GATEWAY_TOKEN)"
        )
        await JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})(scope, _no_receive, send)

    def _valid(self, scope: Scope) -> bool:
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, value = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token)


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class JsonCors(CORSMiddleware):
    """Starlette's CORS middleware whose refused preflights answer like every other error:
    ``{"error": {"code": "cors_refused", ...}}`` (status 400, CORS headers kept)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode(errors="replace")
        message = (
            f"{reason} (origin {request_headers.get('origin')!r}; allowed: TRACE_WORKER_GATEWAY_CORS_ORIGINS)"
        )
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return JSONResponse(error_body("cors_refused", message), 400, headers=headers)


def create_app(settings: Settings, runtime: GatewayRuntime | None = None) -> FastAPI:
    """The gateway application for ``settings`` (``runtime``: prebuilt parts, else built at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or build_runtime(settings)
        app.state.runtime = rt
        try:
            yield
        finally:
            await rt.aclose()

    app = FastAPI(
        title="trace-worker gateway",
        version=__version__,
        description="Processes from the analytics service and Perfetto traces from trace-worker jobs "
        "(a requester of the wire contract, docs/PROTOCOL.md). Errors: "
        '`{"error": {"code", "message", "retryable"}}` (docs/GATEWAY.md).',
        lifespan=lifespan,
    )
    install_handlers(app)
    app.include_router(processes.router)
    app.include_router(traces.router)
    _ops(app, settings)
    _page(app, settings)
    # Outermost last: counting, CORS (answers preflights), the token, then the body limit.
    app.add_middleware(BodyLimit, limit=settings.gateway_max_body_bytes)
    if settings.gateway_token is not None:
        app.add_middleware(TokenCheck, token=settings.gateway_token.get_secret_value())
    if settings.gateway_cors_origin_list:
        app.add_middleware(
            JsonCors,
            allow_origins=settings.gateway_cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["ETag", "Content-Disposition", "Content-Length", "Location"],
        )
    app.add_middleware(CountRequests)
    return app


def _ops(app: FastAPI, settings: Settings) -> None:
    @app.get("/livez", tags=["operations"], response_class=PlainTextResponse)
    async def livez() -> str:
        """200 while the event loop answers."""
        return "ok\n"

    @app.get("/readyz", tags=["operations"])
    async def readyz(request: Request) -> JSONResponse:
        """200 when Redis and the Flight SQL service answer; 503 with each failure otherwise."""
        rt: GatewayRuntime = request.app.state.runtime
        failures: dict[str, str] = {}
        for name, probe in (("redis", rt.client.ping), ("flightsql", rt.source.ping)):
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await probe()
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if failures:
            return JSONResponse({"ready": False, "failures": failures}, 503)
        return JSONResponse({"ready": True})

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        """Prometheus text format."""
        rt: GatewayRuntime = request.app.state.runtime
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _page(app: FastAPI, settings: Settings) -> None:
    static = resources.files("worker.gateway") / "static"
    index = (static / "index.html").read_text()

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index, headers={"Cache-Control": "no-cache"})

    @app.get("/ui-config.json", include_in_schema=False)
    async def ui_config() -> dict[str, Any]:
        return {
            "perfetto_origin": settings.gateway_perfetto_origin,
            "auth": settings.gateway_token is not None,
            "version": __version__,
        }

    app.mount("/static", StaticFiles(directory=str(static)), name="static")


class CountRequests:
    """ASGI middleware: counts answers by route template, method and status (at response start)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                rt: GatewayRuntime | None = getattr(scope["app"].state, "runtime", None)
                if rt is not None:
                    rt.metrics.requests.labels(template, scope["method"], str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)
