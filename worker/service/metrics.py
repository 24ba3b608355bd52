"""Prometheus metrics of one worker process, in a private registry (tests run several services)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]


class _SourceCalls(Collector):
    """``trace_worker_flightsql_calls_total{call}``, read from the source's own counts at scrape time."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "trace_worker_flightsql_calls",
            "Flight SQL calls made (GetFlightInfo, DoGet) and connections opened (connect).",
            labels=["call"],
        )
        # Every call from the first scrape on, so rate() and absent() see 0 rather than no series.
        counts = {"DoGet": 0, "GetFlightInfo": 0, "connect": 0} | dict(self._counts())
        for call, n in sorted(counts.items()):
            family.add_metric([call], n)
        yield family


_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_RATE_BUCKETS = (1e4, 5e4, 1e5, 2.5e5, 5e5, 7.5e5, 1e6, 1.5e6, 2e6, 4e6)


class Metrics:
    """Every metric the service exports on ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("trace_worker_jobs", "Jobs ended, by terminal state.", ["state"], registry=r)
        self.job_duration = Histogram(
            "trace_worker_job_duration_seconds",
            "Run time of ended attempts, by terminal state.",
            ["state"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.spans_per_second = Histogram(
            "trace_worker_spans_per_second",
            "Throughput of succeeded jobs.",
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.spans = Counter("trace_worker_spans", "Spans written into succeeded traces.", registry=r)
        self.trace_bytes = Counter("trace_worker_trace_bytes", "Bytes of succeeded traces.", registry=r)
        self.running = Gauge("trace_worker_jobs_running", "Deliveries being worked on now.", registry=r)
        self.pending = Gauge(
            "trace_worker_pending_entries",
            "Request entries delivered but not acknowledged (group).",
            registry=r,
        )
        self.lag = Gauge(
            "trace_worker_pending_oldest_idle_seconds",
            "Idle time of the oldest unacknowledged entry.",
            registry=r,
        )
        self.deliveries = Counter(
            "trace_worker_deliveries",
            "Request entries taken up, by path (new, reclaimed).",
            ["path"],
            registry=r,
        )
        self.attempts = Counter("trace_worker_attempts", "Attempts started.", registry=r)
        self.retries = Counter(
            "trace_worker_retries", "Attempts ended by a transient error and retried.", registry=r
        )
        self.duplicates = Counter(
            "trace_worker_duplicates", "Requests for a job already running or done.", registry=r
        )
        self.lease_losses = Counter(
            "trace_worker_lease_losses", "Attempts stopped because another worker took the job.", registry=r
        )
        self.dead_letters = Counter(
            "trace_worker_dead_letters",
            "Entries written to the dead-letter stream, by reason.",
            ["reason"],
            registry=r,
        )
        self.internal_errors = Counter(
            "trace_worker_internal_errors", "Unexpected exceptions caught by the service.", registry=r
        )

    def watch_source_calls(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Export the Flight SQL source's call counts (``counts()`` is read at each scrape)."""
        self.registry.register(_SourceCalls(counts))
