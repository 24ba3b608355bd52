"""The trace request: one JSON object in the `request` field of an entry on ``<prefix>:requests``.

Example:
    >>> r = TraceRequest(process_id="34D7C06D-3163-4111-863E-C5FC09D22D51")
    >>> r.process_id, r.span_types.value, r.effective_job_id()[:2]
    ('34d7c06d-3163-4111-863e-c5fc09d22d51', 'both', 't-')
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "JOB_ID_PATTERN",
    "MAX_LABELS",
    "MAX_LABEL_KEY",
    "MAX_LABEL_VALUE",
    "MAX_REQUEST_BYTES",
    "SpanTypes",
    "TraceRequest",
    "label_problem",
]

#: Allowed job ids: 1-128 characters of letters, digits, '.', '_' and '-'.
JOB_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
#: Limits of the `labels` map.
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
#: Largest `request` field accepted, in bytes of UTF-8 JSON.
MAX_REQUEST_BYTES = 16 * 1024

_LABEL_KEY = re.compile(r"[A-Za-z0-9._:/-]{1,64}")


def label_problem(key: object, value: object) -> str | None:
    """Why one label is not allowed, or None when it is.

    Keys are 1-64 of ``[A-Za-z0-9._:/-]``; values are strings of at most 256 characters that are
    all printable (:meth:`str.isprintable`): no C0 or C1 controls (e.g. ESC, U+009B CSI), no
    format characters such as the bidirectional overrides (U+202E), no line or paragraph
    separators. Labels are echoed to terminals, so what could move a cursor or reorder text is out.
    """
    if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
        return f"label keys are 1-{MAX_LABEL_KEY} of [A-Za-z0-9._:/-]"
    if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or not value.isprintable():
        return f"label values are at most {MAX_LABEL_VALUE} printable characters (no control/format ones)"
    return None


class SpanTypes(StrEnum):
    """Which spans go into the trace."""

    THREAD = "thread"
    ASYNC = "async"
    BOTH = "both"

    @property
    def thread(self) -> bool:
        return self in (SpanTypes.THREAD, SpanTypes.BOTH)

    @property
    def async_(self) -> bool:
        return self in (SpanTypes.ASYNC, SpanTypes.BOTH)


class TraceRequest(BaseModel):
    """A request for the Perfetto trace of one process."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    #: Protocol version of the request.
    v: Literal[1] = 1
    #: Micromegas process id (a UUID; normalised to lower case).
    process_id: str
    #: Start of the range (RFC 3339 with an offset). Default: the process's first recorded time.
    begin: datetime | None = None
    #: End of the range (RFC 3339 with an offset). Default: the process's last recorded time.
    end: datetime | None = None
    #: thread, async or both.
    span_types: SpanTypes = SpanTypes.BOTH
    #: Idempotency key. Default: derived from the request, so identical requests share a job.
    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN)] | None = None
    #: Publish the trace bytes as chunk entries on the job stream (false: blob only).
    chunks: bool = True
    #: Small string map echoed in every event of the job (requested_by, channel, ...).
    labels: dict[str, str] = Field(default_factory=dict)
    #: Add the process's log entries as Perfetto log messages (additive; default false).
    logs: bool = False
    #: Add the process's measures as Perfetto counter tracks (additive; default false).
    metrics: bool = False

    @field_validator("process_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            parsed = uuid.UUID(value)
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError("process_id must be a UUID like 34d7c06d-3163-4111-863e-c5fc09d22d51") from exc
        if len(value) != 36:
            raise ValueError("process_id must be a UUID in the 8-4-4-4-12 form")
        return str(parsed)

    @field_validator("begin", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("times need an offset, e.g. 2026-11-26T10:00:00Z")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels")
        for key, val in value.items():
            problem = label_problem(key, val)
            if problem is not None:
                raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _range(self) -> TraceRequest:
        if self.begin is not None and self.end is not None and self.begin >= self.end:
            raise ValueError("begin must be before end")
        return self

    def effective_job_id(self) -> str:
        """The job id: the given one, or one derived from what the trace depends on."""
        if self.job_id is not None:
            return self.job_id
        key = {
            "process_id": self.process_id,
            "begin": self.begin_ns,
            "end": self.end_ns,
            "span_types": self.span_types.value,
            "chunks": self.chunks,
        }
        key.update(_additive_key_fields(self))
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return f"t-{digest[:32]}"

    @property
    def begin_ns(self) -> int | None:
        """``begin`` in nanoseconds since the Unix epoch (None: the process's first time)."""
        return _ns(self.begin)

    @property
    def end_ns(self) -> int | None:
        """``end`` in nanoseconds since the Unix epoch (None: the process's last time)."""
        return _ns(self.end)

    def to_json(self) -> str:
        """The wire form (the `request` field)."""
        return self.model_dump_json(exclude_none=True, exclude=_unset_additive_fields(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> TraceRequest:
        """Parse the wire form; raises ``ValueError`` (pydantic ``ValidationError``) when invalid."""
        if len(raw) > MAX_REQUEST_BYTES:
            raise ValueError(f"request is larger than {MAX_REQUEST_BYTES} bytes")
        return cls.model_validate_json(raw)


#: Boolean fields added after v1's first release: in the job id key and the wire form only when true,
#: so requests without them keep their job id and their JSON.
_ADDITIVE_FLAGS = ("logs", "metrics")


def _additive_key_fields(request: TraceRequest) -> dict[str, bool]:
    """The additive flags that are set, for the derived job id's hashed JSON (sorted with the rest)."""
    return {name: True for name in _ADDITIVE_FLAGS if getattr(request, name)}


def _unset_additive_fields(request: TraceRequest) -> set[str]:
    return {name for name in _ADDITIVE_FLAGS if not getattr(request, name)}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(value: datetime | None) -> int | None:
    """Epoch nanoseconds, exactly (no float). Instants compare by time, not spelling:
    10:00+01:00 and 09:00Z give the same value."""
    if value is None:
        return None
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000
