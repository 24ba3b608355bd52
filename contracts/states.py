"""Job states as they appear on the wire (`state` field of status events and the state hash)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TERMINAL_STATES", "JobState"]


class JobState(StrEnum):
    """Lifecycle of one trace job."""

    #: Accepted by a worker, waiting for a free slot.
    QUEUED = "queued"
    #: An attempt is producing the trace; `attempt` says which one.
    RUNNING = "running"
    #: The trace is complete: blob written, chunks (if requested) published.
    SUCCEEDED = "succeeded"
    #: Ended with an error; `error_code`, `message` and `retryable` say why.
    FAILED = "failed"
    #: Stopped on request (an entry on <prefix>:cancels), or a request that left the job.
    CANCELLED = "cancelled"
    #: Given up after too many deliveries; the original entry is on the dead-letter stream.
    DEAD = "dead"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


#: States after which nothing more happens to a job (a failed job may be resubmitted as a new run).
TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD}
)
