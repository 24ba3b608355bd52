"""The trace-worker wire contract v1, shared with clients. Imports pydantic and the stdlib only.

See docs/PROTOCOL.md for the whole exchange with redis-cli examples.
"""

from contracts.errors import ErrorCode
from contracts.events import ChunkEvent, Event, ProgressEvent, StatusEvent, parse_entry
from contracts.keys import DEFAULT_PREFIX, Keys
from contracts.request import SpanTypes, TraceRequest
from contracts.states import TERMINAL_STATES, JobState

__all__ = [
    "DEFAULT_PREFIX",
    "TERMINAL_STATES",
    "ChunkEvent",
    "ErrorCode",
    "Event",
    "JobState",
    "Keys",
    "ProgressEvent",
    "SpanTypes",
    "StatusEvent",
    "TraceRequest",
    "parse_entry",
]
