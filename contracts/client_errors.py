"""Errors raised by the client library (:mod:`contracts.client`). Stdlib and contracts only.

Every failure of a client call is a :class:`ClientError`:

- :class:`InvalidRequest` (also a ``ValueError``): a request, job id or argument the contract
  refuses; :class:`InvalidJobId` for a malformed job id;
- :class:`JobNotFound`: no job with that id (never submitted, or expired after the job TTL);
- :class:`ConnectionLost`: Redis unreachable (a single command: at once, after the connection
  pool's own retries; a follower: after ``reconnect_timeout_s`` of retrying);
- :class:`JobFailed`: the job ended without a trace (``.status`` says why);
- :class:`TraceIntegrityError`: received bytes do not match the job's size/sha256;
- :class:`WaitTimeout` (also a ``TimeoutError``): a ``timeout`` given to a call ran out.
"""

from __future__ import annotations

from contracts.events import StatusEvent

__all__ = [
    "ClientError",
    "ConnectionLost",
    "InvalidJobId",
    "InvalidRequest",
    "JobFailed",
    "JobNotFound",
    "TraceIntegrityError",
    "WaitTimeout",
]


class ClientError(Exception):
    """Base of every client-side failure."""


class InvalidRequest(ClientError, ValueError):
    """The request (or an argument) breaks the wire contract; the message says which field and why."""


class InvalidJobId(InvalidRequest):
    """A job id that cannot exist: 1-128 characters of ``[A-Za-z0-9._-]``."""


class JobNotFound(ClientError):
    """No job has that id: never submitted (through this library), or expired after the job TTL."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r}: never submitted, or expired after the job TTL")


class ConnectionLost(ClientError):
    """Redis is unreachable (for a follower: for longer than the client's reconnect timeout)."""


class JobFailed(ClientError):
    """The job ended without a trace (failed, cancelled or dead); ``status`` says why."""

    def __init__(self, status: StatusEvent) -> None:
        self.status = status
        reason = f"{status.error_code.value}: {status.message}" if status.error_code else status.state.value
        super().__init__(f"job {status.job_id} ended {status.state.value} ({reason})")


class TraceIntegrityError(ClientError):
    """The received bytes do not match the terminal status (size / sha256), or chunks are missing."""


class WaitTimeout(ClientError, TimeoutError):
    """The ``timeout`` given to ``wait``/``download``/``events`` ran out (the job goes on)."""
