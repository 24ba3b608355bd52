"""HTTP endpoints on a tiny stdlib asyncio server (no web framework needed for four GETs).

- ``GET /livez``: 200 while the event loop runs and the reclaim loop has ticked recently
  (a wedged loop or a dead consume loop answers 503 or not at all).
- ``GET /readyz``: 200 when Redis and the Flight SQL service answer and the blob store accepts a
  small write (``.readyz-*``, written and deleted); 503 with the reason otherwise.
  The probes are cached and single-flight (:mod:`worker.service.readiness`): at most one Flight
  SQL query per ``READY_TTL_S`` however many clients poll, and an answer within ``PROBE_TIMEOUT_S``.
- ``GET /metrics``: Prometheus text format.
- ``GET /asyncapi.json``: the AsyncAPI document generated from the FastStream app (built once).
- ``GET /schemas/``: the names of the wire-form JSON Schemas; ``GET /schemas/<name>.json``: one of
  them (``contracts/schemas/wire/``, read once at start).

Requests are read with bounds: a request line or header line over :data:`MAX_LINE` bytes, or
more than :data:`MAX_HEADERS` header lines, get ``400`` and one debug log line (no traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.schema import WIRE_DIR
from worker.service.readiness import PROBE_TIMEOUT_S, Readiness
from worker.service.runtime import Runtime

__all__ = ["MAX_HEADERS", "MAX_LINE", "PROBE_TIMEOUT_S", "HealthServer"]

log = logging.getLogger("worker.service.health")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
#: Longest request or header line read (bytes); asyncio's default stream limit.
MAX_LINE = 64 * 1024
#: Most header lines read per request.
MAX_HEADERS = 100


class HealthServer:
    """Serves the endpoints for one runtime.

    Args:
        rt: the service runtime.
        asyncapi: returns the AsyncAPI document as JSON text.
        host: address to bind.
        port: port to bind (0: any free port; see :attr:`port` after :meth:`start`).
    """

    def __init__(self, rt: Runtime, asyncapi: Callable[[], str], host: str, port: int) -> None:
        self._rt = rt
        self._asyncapi = asyncapi
        self._host = host
        self.port = port
        self._server: asyncio.Server | None = None
        #: The wire schemas, by URL path (static: read once).
        self._schemas = {f"/schemas/{p.name}": p.read_bytes() for p in sorted(WIRE_DIR.glob("*.json"))}
        index = {"schemas": [path.rsplit("/", 1)[1] for path in self._schemas]}
        self._schemas["/schemas/"] = json.dumps(index).encode()
        self.readiness = Readiness(self._probes())

    def _probes(self) -> dict[str, Callable[[], Awaitable[object]]]:
        """The dependencies ``/readyz`` checks, by name."""
        rt = self._rt

        async def redis() -> object:
            return await rt.redis.ping()

        async def flightsql() -> None:
            await rt.generator.ping()  # looked up per call: the generator may be swapped

        async def blob() -> None:
            await rt.store.ping()  # a small write + delete: the store must accept the trace

        return {"redis": redis, "flightsql": flightsql, "blob": blob}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self.port, limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http endpoints on http://%s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.readiness.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                try:
                    request_line = await reader.readline()
                    for _ in range(MAX_HEADERS + 1):
                        if (await reader.readline()) in (b"\r\n", b"\n", b""):
                            break
                    else:
                        raise ValueError(f"more than {MAX_HEADERS} header lines")
                except ValueError as exc:  # asyncio: a line over the stream limit
                    log.debug("bad http request: %s", exc)
                    status, ctype, body = 400, "text/plain", b"request line or headers too long\n"
                else:
                    parts = request_line.decode("latin-1").split()
                    method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
                    status, ctype, body = await self._route(method, path.split("?", 1)[0])
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        if path == "/livez":
            return self._livez()
        if path == "/readyz":
            return await self._readyz()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._rt.metrics.registry)
        if path == "/asyncapi.json":
            return 200, "application/json", self._asyncapi().encode()
        if path in self._schemas:
            return 200, "application/schema+json", self._schemas[path]
        return 404, "text/plain", b"not found\n"

    def _livez(self) -> tuple[int, str, bytes]:
        if self._rt.fatal.is_set():
            return 503, "text/plain", b"the request subscriber stopped consuming\n"
        stale = time.monotonic() - self._rt.last_tick
        limit = 3 * self._rt.settings.reclaim_interval_s + 30
        if stale > limit:
            return 503, "text/plain", f"reclaim loop silent for {stale:.0f}s\n".encode()
        return 200, "text/plain", b"ok\n"

    async def _readyz(self) -> tuple[int, str, bytes]:
        failures = dict(await self.readiness.failures())
        if failures or self._rt.stopping.is_set():
            if self._rt.stopping.is_set():
                failures["service"] = "shutting down"
            return 503, "application/json", json.dumps({"ready": False, "failures": failures}).encode()
        return 200, "application/json", b'{"ready": true}'
