"""What the gateway holds while it runs: the client library, the catalog, job handles, limits, metrics."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from contracts.client import JobHandle, TraceClient
from worker.gateway.errors import ApiError
from worker.settings import Settings
from worker.source.catalog import Catalog
from worker.source.flightsql import FlightSqlSource

__all__ = ["GatewayMetrics", "GatewayRuntime", "Handles"]

#: Job handles remembered (those submitted through this gateway; the oldest are forgotten first).
MAX_HANDLES = 10_000


class GatewayMetrics:
    """Prometheus metrics of one gateway, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "trace_gateway_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "trace_gateway_jobs_submitted", "Trace requests submitted to Redis", registry=self.registry
        )
        self.downloaded = Counter(
            "trace_gateway_download_bytes", "Trace bytes sent to HTTP clients", registry=self.registry
        )
        self.streams = Gauge(
            "trace_gateway_open_streams", "Event streams and downloads being served", registry=self.registry
        )


class Handles:
    """Handles of jobs submitted here, so a follower sees the run it started (not an older failed one).

    A job submitted elsewhere gets a handle reading its stream from the start.
    """

    def __init__(self, client: TraceClient, limit: int = MAX_HANDLES) -> None:
        self._client = client
        self._limit = limit
        self._known: OrderedDict[str, JobHandle] = OrderedDict()

    def remember(self, handle: JobHandle) -> None:
        self._known[handle.job_id] = handle
        self._known.move_to_end(handle.job_id)
        while len(self._known) > self._limit:
            self._known.popitem(last=False)

    def submitted_here(self, job_id: str) -> bool:
        return job_id in self._known

    def detach(self, job_id: str) -> None:
        """This gateway's request left the job (a ``detached`` cancel): from now on the job is
        followed as a job (its own state and end), not as this gateway's request."""
        if job_id in self._known:
            self._known[job_id] = self._client.job(job_id)

    def get(self, job_id: str) -> JobHandle:
        return self._known.get(job_id) or self._client.job(job_id)


@dataclass
class GatewayRuntime:
    """Everything the routes share. Built by the app's lifespan; closed by :meth:`aclose`."""

    settings: Settings
    client: TraceClient
    source: FlightSqlSource
    catalog: Catalog
    handles: Handles
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    open_streams: int = 0

    def check_capacity(self) -> None:
        """Refuse (429) a new event stream or download when ``gateway_max_streams`` are open.

        Checked before the answer starts (so the refusal has a status); counted by
        :meth:`stream_slot` while the answer runs.
        """
        if self.open_streams >= self.settings.gateway_max_streams:
            raise ApiError(
                429,
                "too_many_streams",
                f"{self.open_streams} event streams and downloads are open (limit "
                f"{self.settings.gateway_max_streams}); retry shortly",
                retryable=True,
                headers={"Retry-After": "2"},
            )

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[None]:
        """Counts one open event stream or download for its duration."""
        self.open_streams += 1
        self.metrics.streams.inc()
        try:
            yield
        finally:
            self.open_streams -= 1
            self.metrics.streams.dec()

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        finally:
            await self.source.aclose()
