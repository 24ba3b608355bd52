"""The production :class:`~worker.service.ports.TraceGenerator`: ``worker.pipeline`` over a Flight SQL
source, with the limits from the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from contracts.request import TraceRequest
from worker.pipeline import Cancelled, Progress, TraceSpec, generate_trace
from worker.service.ports import ProgressLike, StopRequested
from worker.settings import Settings
from worker.source import FlightSqlConfig, FlightSqlSource, Source

__all__ = ["PipelineGenerator", "spec_for"]


def spec_for(request: TraceRequest, settings: Settings) -> TraceSpec:
    """The pipeline's job description for a request, limits included."""
    return TraceSpec(
        process_id=request.process_id,
        begin_ns=request.begin_ns,
        end_ns=request.end_ns,
        span_types=request.span_types,
        chunk_size=settings.chunk_size,
        max_spans=settings.max_spans,
        max_bytes=settings.max_trace_bytes,
        max_range_ns=int(settings.max_range_s * 1e9),
        async_lookback_ns=int(settings.async_lookback_s * 1e9),
        logs=request.logs,
        metrics=request.metrics,
        max_log_entries=settings.max_log_entries,
        max_measures=settings.max_measures,
    )


class PipelineGenerator:
    """Generates traces from a :class:`~worker.source.Source` (one shared Flight SQL source)."""

    def __init__(self, settings: Settings, source: Source | None = None) -> None:
        self._settings = settings
        self._source: Source = source or FlightSqlSource(FlightSqlConfig.from_settings(settings))

    async def generate(
        self,
        request: TraceRequest,
        *,
        on_progress: Callable[[ProgressLike], None],
        should_stop: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[bytes]:
        def report(p: Progress) -> None:
            on_progress(p)

        try:
            async for chunk in generate_trace(
                self._source, spec_for(request, self._settings), on_progress=report, should_stop=should_stop
            ):
                yield chunk
        except Cancelled as exc:
            raise StopRequested(str(exc)) from exc

    def source_calls(self) -> Mapping[str, int]:
        """Flight SQL calls made so far, by name (empty for a source that does not count them)."""
        calls: Mapping[str, int] = getattr(self._source, "calls", {})
        return calls

    async def ping(self) -> None:
        await self._source.ping()

    async def aclose(self) -> None:
        await self._source.aclose()
