"""The trace request: one JSON object in the `request` field of an entry on ``<prefix>:requests``.

Example:
    >>> r = TraceRequest(process_id="34D7C06D-3163-4111-863E-C5FC09D22D51")
    >>> r.process_id, r.span_types.value, r.effective_job_id()[:2]
    ('34d7c06d-3163-4111-863e-c5fc09d22d51', 'both', 't-')
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

__all__ = [
    "DEFAULT_OPEN_MAX_AGE_S",
    "DERIVED_PREFIX",
    "JOB_ID_PATTERN",
    "MAX_LABELS",
    "MAX_LABEL_KEY",
    "MAX_LABEL_VALUE",
    "MAX_REQUEST_BYTES",
    "RFC3339",
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

#: Prefix of derived job ids; an explicit job id with this prefix must equal the derived one.
DERIVED_PREFIX = "t-"
#: How old (seconds) a succeeded answer to an open-ended request (no `end`) may be to be reused.
DEFAULT_OPEN_MAX_AGE_S = 60

#: str.isprintable() as a JSON Schema pattern, nearly: no C0/C1 controls, bidi or zero-width formats.
_PRINTABLE_SCHEMA_PATTERN = (
    "^[^\\u0000-\\u001f\\u007f-\\u009f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\ufeff]*$"
)
_UUID_SCHEMA_PATTERN = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"

_LABEL_KEY = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
#: The accepted spelling of ``begin``/``end``: RFC 3339 ``date-time`` (section 5.6), seconds
#: required, ``.`` before a fraction, ``Z`` or a ``+HH:MM``/``-HH:MM`` offset; ``T``/``Z`` in either case.
_RFC3339_SCHEMA_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
RFC3339 = re.compile(_RFC3339_SCHEMA_PATTERN)


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
    process_id: Annotated[str, Field(json_schema_extra={"pattern": _UUID_SCHEMA_PATTERN})]
    #: Start of the range (RFC 3339 with an offset). Default: the process's first recorded time.
    begin: Annotated[datetime | None, Field(json_schema_extra={"pattern": _RFC3339_SCHEMA_PATTERN})] = None
    #: End of the range (RFC 3339 with an offset). Default: the process's last recorded time.
    end: Annotated[datetime | None, Field(json_schema_extra={"pattern": _RFC3339_SCHEMA_PATTERN})] = None
    #: thread, async or both.
    span_types: SpanTypes = SpanTypes.BOTH
    #: Idempotency key. Default: derived from the request, so identical requests share a job.
    job_id: Annotated[str, Field(pattern=JOB_ID_PATTERN)] | None = None
    #: Publish the trace bytes as chunk entries on the job stream (false: blob only).
    chunks: StrictBool = True
    #: Small string map echoed in every event of the job (requested_by, channel, ...).
    labels: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={
            "maxProperties": MAX_LABELS,
            "propertyNames": {"pattern": f"^{_LABEL_KEY.pattern}$"},
            "additionalProperties": {
                "type": "string",
                "maxLength": MAX_LABEL_VALUE,
                "pattern": _PRINTABLE_SCHEMA_PATTERN,
            },
        },
    )
    #: Reuse a succeeded job only if its attempt started at most this many seconds ago (0: always a
    #: fresh run). Default: DEFAULT_OPEN_MAX_AGE_S without `end`, unlimited with `end`. Added in v1.1;
    #: not part of the job id.
    max_age_s: Annotated[StrictInt, Field(ge=0, le=365 * 24 * 3600)] | None = None
    #: Add the process's log entries as Perfetto log messages (additive; default false).
    logs: StrictBool = False
    #: Add the process's measures as Perfetto counter tracks (additive; default false).
    metrics: StrictBool = False
    #: How the blob is stored: "gzip" (compressed; the trace bytes, chunks, size and sha256 are
    #: unchanged) or "none". Default (absent): the worker's ``blob_compress`` setting. Added in v1.1;
    #: part of the job id only when given.
    compress: Literal["none", "gzip"] | None = None

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

    @field_validator("begin", "end", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        if isinstance(value, str) and not RFC3339.fullmatch(value):
            raise ValueError(
                "times are RFC 3339: YYYY-MM-DDTHH:MM:SS[.fraction] then Z or +HH:MM/-HH:MM, "
                f"e.g. 2026-11-26T10:00:00Z (got {value[:40]!r})"
            )
        if value is not None and not isinstance(value, (str, datetime)):
            raise ValueError("times are RFC 3339 strings, e.g. 2026-11-26T10:00:00Z")
        return value

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
        if self.job_id is not None and self.job_id.startswith(DERIVED_PREFIX):
            derived = self.derived_job_id()
            if self.job_id != derived:
                raise ValueError(
                    f"job ids starting with {DERIVED_PREFIX!r} are derived ids; this request's is {derived}"
                )
        return self

    def canonical(self) -> bytes:
        """The canonical byte string of what the trace depends on (docs/PROTOCOL.md, "Job ids")::

            {"begin": B, "chunks": K, "end": E, "process_id": "P", "span_types": "S"}

        B/E: integer epoch nanoseconds (whole microseconds x 1000) or ``null``; K: ``true``/``false``;
        P: lower-case UUID; S: thread/async/both. The additive flags ``logs`` and ``metrics`` appear,
        as ``"logs": true, "metrics": true, `` after E, only when set; ``compress`` appears, as
        ``"compress": "gzip", `` after K, only when given. Test vectors:
        ``contracts/job_id_vectors.json``.
        """
        compress = f'"compress": "{self.compress}", ' if self.compress is not None else ""
        return (
            f'{{"begin": {_num(self.begin_ns)}, "chunks": {"true" if self.chunks else "false"}, '
            f'{compress}"end": {_num(self.end_ns)}, {_additive_canonical(self)}'
            f'"process_id": "{self.process_id}", "span_types": "{self.span_types.value}"}}'
        ).encode()

    def fingerprint(self) -> str:
        """sha256 hex of :meth:`canonical`: a duplicate must have the job's fingerprint."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def derived_job_id(self) -> str:
        """``t-`` + the first 32 hex digits of :meth:`fingerprint`."""
        return DERIVED_PREFIX + self.fingerprint()[:32]

    def effective_job_id(self) -> str:
        """The job id: the given one, or one derived from what the trace depends on."""
        if self.job_id is not None:
            return self.job_id
        return self.derived_job_id()

    @property
    def open_ended(self) -> bool:
        """No ``end``: the end is resolved when a worker starts the job ("up to now")."""
        return self.end is None

    @property
    def effective_max_age_s(self) -> int | None:
        """How old a reused answer may be (None: any age)."""
        if self.max_age_s is not None:
            return self.max_age_s
        return DEFAULT_OPEN_MAX_AGE_S if self.open_ended else None

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


def _additive_canonical(request: TraceRequest) -> str:
    """The set additive flags in canonical form (``"logs": true, "metrics": true, ``), in key order;
    empty when none is set, so requests without them keep their v1 ids."""
    return "".join(f'"{name}": true, ' for name in sorted(_additive_key_fields(request)))


def _unset_additive_fields(request: TraceRequest) -> set[str]:
    return {name for name in _ADDITIVE_FLAGS if not getattr(request, name)}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _num(value: int | None) -> str:
    return "null" if value is None else str(value)


def _ns(value: datetime | None) -> int | None:
    """Epoch nanoseconds, exactly (no float). Instants compare by time, not spelling:
    10:00+01:00 and 09:00Z give the same value."""
    if value is None:
        return None
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000
