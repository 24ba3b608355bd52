"""Entries of the per-job stream ``<prefix>:job:{<job_id>}`` (and, for status, ``<prefix>:events``).

Every entry is a flat Redis field map with a ``type`` field: ``status``, ``progress`` or ``chunk``.
Values are UTF-8 strings, except a chunk's ``data`` (raw trace bytes). ``labels`` is a JSON object.
:func:`parse_entry` turns a field map read with any Redis client into the typed event.

Example:
    >>> e = ChunkEvent(job_id="j", attempt=1, seq=0, offset=0, data=b"\\n\\x00", last=True)
    >>> parse_entry(e.to_fields()) == e
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import ErrorCode
from contracts.states import JobState

__all__ = [
    "REQUEST_ID_PATTERN",
    "CancelEvent",
    "CancelOutcome",
    "ChunkEvent",
    "Event",
    "ProgressEvent",
    "StatusEvent",
    "parse_entry",
    "utcnow",
]

#: A Redis stream entry id (``<ms>-<seq>``): request ids and stream positions.
REQUEST_ID_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"
_EntryId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The job this entry belongs to.
    job_id: str
    #: Attempt number (1 for the first delivery); entries of older attempts are superseded.
    attempt: Annotated[int, Field(ge=0)] = 0

    def to_fields(self) -> dict[str, str | bytes]:
        """The Redis field map of this entry."""
        out: dict[str, str | bytes] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, bytes):
                out[name] = value
            elif isinstance(value, bool):
                out[name] = "true" if value else "false"
            elif isinstance(value, datetime):
                out[name] = value.isoformat()
            elif isinstance(value, dict):
                out[name] = json.dumps(value, sort_keys=True)
            else:
                out[name] = str(value)
        return out


class StatusEvent(_Event):
    """A state transition. Terminal states carry the outcome."""

    type: Literal["status"] = "status"
    state: JobState
    #: When the transition happened (UTC).
    time: datetime = Field(default_factory=utcnow)
    #: Labels of the request, echoed.
    labels: dict[str, str] = Field(default_factory=dict)
    #: A short human-readable note (e.g. "duplicate request; job already running").
    detail: str | None = None
    # -- running (v1.1): how the worker keeps its lease, so a follower can tell a silent worker
    #: Seconds a lease lasts without a heartbeat (the lock key's TTL when renewed).
    lease_s: float | None = None
    #: Seconds between heartbeats (lease renewals) of a live worker.
    heartbeat_s: float | None = None
    #: The request entry (id on <prefix>:requests) this status answers; absent on job-level
    #: entries that answer no request in particular. Added in v1.1.
    request_id: _EntryId | None = None
    # -- succeeded
    #: Where the trace object is (file:// or s3:// URI).
    uri: str | None = None
    #: A fetchable URL (presigned for S3) where the store can sign one.
    url: str | None = None
    size: int | None = None
    sha256: str | None = None
    spans: int | None = None
    packets: int | None = None
    chunks: int | None = None
    duration_s: float | None = None
    #: Job-stream entry id of the answered attempt's ``running`` status: its chunks follow it.
    start_id: _EntryId | None = None
    #: The range the trace covers, resolved when the attempt started (epoch ns).
    begin_ns: int | None = None
    end_ns: int | None = None
    #: "gzip" when the blob is stored gzip-compressed (absent: plain). ``size`` and ``sha256`` are
    #: always those of the plain trace (the chunks); ``stored_size`` is the object's size. v1.1.
    encoding: Literal["gzip"] | None = None
    stored_size: int | None = None
    # -- failed / dead
    error_code: ErrorCode | None = None
    #: What went wrong, in words a person can act on.
    message: str | None = None
    retryable: bool | None = None


class ProgressEvent(_Event):
    """How far the running attempt is. At most a few per second."""

    type: Literal["progress"] = "progress"
    #: What the attempt is doing: resolving, threads, async, uploading.
    phase: str
    spans: int = 0
    bytes: int = 0
    threads_done: int = 0
    threads_total: int = 0
    #: Best estimate, 0-100.
    percent: float = 0.0
    #: When the worker measured this progress (UTC); v1.1, absent from older workers' entries.
    time: datetime | None = None


class ChunkEvent(_Event):
    """A piece of the trace: a whole number of TracePackets.

    Concatenating the chunks of the succeeding attempt in ``seq`` order gives the trace file.
    """

    type: Literal["chunk"] = "chunk"
    seq: Annotated[int, Field(ge=0)]
    #: Byte offset of this chunk in the trace file.
    offset: Annotated[int, Field(ge=0)]
    data: bytes
    #: True on the final chunk of the attempt.
    last: bool = False


class CancelOutcome(StrEnum):
    """What a cancel entry did (PROTOCOL §5). cancelled: the job stops (no request wants it any
    more); its requests are answered cancelled once it has ended. detached: the named request left
    a job that goes on for others. pending: the named request, or without request_id every request
    for a job that does not run, still waits for a worker: it is answered cancelled at pickup without
    running, and without request_id the job then ends cancelled. not_found: no such job or request
    (job streams this answer creates expire after 60 s). already_ended: the job had ended (without
    request_id: it succeeded, or ended with no request waiting); nothing changed."""

    #: The job stops (no request wants it any more).
    CANCELLED = "cancelled"
    #: The named request left the job; the job goes on for the other requests attached to it.
    DETACHED = "detached"
    #: The named request (without ``request_id``: every request for the job, when none runs) was
    #: not picked up yet; it will be answered ``cancelled`` at pickup without running (without
    #: ``request_id``, the job then ends ``cancelled``, attempt unchanged).
    PENDING = "pending"
    #: No running job by that id and no request for it waiting, or the named request is not
    #: attached to it. Job streams this answer creates expire after 60 s.
    NOT_FOUND = "not_found"
    #: The job (or the named request) already ended; nothing was changed.
    ALREADY_ENDED = "already_ended"


class CancelEvent(_Event):
    """The answer to an entry on ``<prefix>:cancels``, written on the job stream. Added in v1.1."""

    type: Literal["cancel"] = "cancel"
    #: The cancel entry's id on <prefix>:cancels.
    cancel_id: _EntryId
    #: The request the cancel named, if it named one.
    request_id: _EntryId | None = None
    outcome: CancelOutcome
    time: datetime = Field(default_factory=utcnow)
    detail: str | None = None


Event = StatusEvent | ProgressEvent | ChunkEvent | CancelEvent

_TYPES: dict[str, type[_Event]] = {
    "status": StatusEvent,
    "progress": ProgressEvent,
    "chunk": ChunkEvent,
    "cancel": CancelEvent,
}
_JSON_FIELDS = frozenset({"labels"})


def parse_entry(fields: Mapping[str, str | bytes] | Mapping[bytes, bytes] | Mapping[Any, Any]) -> Event:
    """Typed event from a stream entry's (or the state hash's) field map (keys/values as str or
    bytes). Unknown fields are ignored.

    Raises:
        ValueError: unknown ``type`` or invalid fields.
    """
    norm: dict[str, object] = {}
    for raw_key, raw_value in fields.items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        if key == "data":
            norm[key] = raw_value if isinstance(raw_value, bytes) else raw_value.encode("latin-1")
            continue
        value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        norm[key] = json.loads(value) if key in _JSON_FIELDS else value
    kind = norm.get("type")
    cls = _TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    # Fields a newer contract adds (or the state hash's own fields) are ignored, never an error.
    event = cls.model_validate({k: v for k, v in norm.items() if k in cls.model_fields})
    assert isinstance(event, StatusEvent | ProgressEvent | ChunkEvent | CancelEvent)
    return event
