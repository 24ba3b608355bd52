"""The FastStream subscriber on the request stream, and the dispatcher every delivery goes through.

The subscriber reads one entry at a time (``max_records=1``) so that entries wait in the stream,
not in this worker's pending list, while all ``worker_concurrency`` slots are busy. Acknowledgement
is manual: only :mod:`worker.service.finish` XACKs, after the terminal status is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faststream import AckPolicy
from faststream.redis import RedisBroker, StreamSub

from contracts.events import CancelEvent, ChunkEvent, ProgressEvent, StatusEvent
from contracts.request import TraceRequest
from worker.service.delivery import Delivery, Dispatcher
from worker.service.job import run_job
from worker.service.middleware.dead_letter import dead_letter_middleware, decode_middleware, poison_handler
from worker.service.middleware.metrics import metrics_middleware
from worker.service.runtime import Runtime

__all__ = ["build_dispatcher", "document_replies", "subscribe"]


def build_dispatcher(rt: Runtime) -> Dispatcher:
    """Metrics → delivery cap → decode → the job; poison (unexpected failures) is dead-lettered."""

    async def final(d: Delivery) -> None:
        request = d.extra["request"]
        assert isinstance(request, TraceRequest)
        await run_job(rt, d.entry_id, request)

    middlewares = [metrics_middleware(rt), dead_letter_middleware(rt), decode_middleware(rt)]
    return Dispatcher(rt, middlewares, final, on_failure=poison_handler(rt))


#: What FastStream's parser is given instead of the entry's fields (see :func:`_raw_parser`).
_STAND_IN: dict[bytes, bytes] = {}


async def _raw_parser(msg: Mapping[str, Any], original: Callable[[Mapping[str, Any]], Awaitable[Any]]) -> Any:
    """FastStream's parser JSON-encodes the field map (and fails on non-UTF-8 bytes); we read the
    raw fields ourselves, so it parses an empty stand-in and the message keeps the original entry."""
    parsed = await original({**msg, "data": _STAND_IN})
    parsed.raw_message = msg
    return parsed


async def _raw_decoder(msg: Any) -> Any:
    """The handler's argument is the raw entry (``message_ids``, ``data``): taking the message
    through FastStream's ``Context`` instead costs a worker-thread hop per delivery (FastDepends
    runs the synchronous ``Context.use`` with ``anyio.to_thread``)."""
    return msg.raw_message


def document_replies(broker: RedisBroker, rt: Runtime) -> None:
    """Declare the streams the service writes, for the AsyncAPI document only (replies are written
    with the raw client as plain field maps, not through these publishers)."""
    keys = rt.keys
    broker.publisher(
        stream=keys.job("{job_id}"),
        title="job stream",
        description="Per-job entries: status, progress and chunk (field `type`); expires after the job.",
        schema=StatusEvent | ProgressEvent | ChunkEvent,
    )
    broker.publisher(
        stream=keys.status_stream("{job_id}"),
        title="job status stream",
        description="The job stream's status, progress and cancel entries (no chunks), same order.",
        schema=StatusEvent | ProgressEvent | CancelEvent,
    )
    broker.publisher(
        stream=keys.events,
        title="events",
        description="Every status transition of every job (MAXLEN ~ events_maxlen).",
        schema=StatusEvent,
    )
    broker.publisher(
        stream=keys.dead,
        title="dead letters",
        description="Original fields under orig:<name>; entry_id, deliveries, reason, error_code, job_id.",
    )


def subscribe(broker: RedisBroker, rt: Runtime, dispatcher: Dispatcher) -> Callable[[], bool]:
    """Register the request-stream subscriber (consumer group, one entry per read, N jobs at once).

    Returns:
        A check that the subscriber is still consuming (FastStream stops it for good on NOGROUP).
    """
    keys = rt.keys
    stream = StreamSub(
        keys.requests,
        group=keys.group,
        consumer=rt.consumer,
        max_records=1,
        polling_interval=1000,
    )

    subscriber = broker.subscriber(
        stream=stream,
        ack_policy=AckPolicy.MANUAL,
        parser=_raw_parser,
        decoder=_raw_decoder,
        max_workers=rt.settings.worker_concurrency,
        title="requests",
        description=(
            "Trace requests: entries with one field `request` holding a TraceRequest JSON object "
            "(contracts/schemas/trace_request.json). Replies go to the job stream <prefix>:job:{<job_id>}."
        ),
    )

    async def on_request(raw: Any) -> None:
        entry_id = raw["message_ids"][0]
        entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        await dispatcher.handle(Delivery(entry_id=entry, fields=dict(raw["data"]), path="new"))

    subscriber(on_request)

    def consuming() -> bool:
        return bool(getattr(subscriber, "running", False))

    return consuming
