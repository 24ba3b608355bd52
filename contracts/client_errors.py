"""Errors raised by the client library (:mod:`contracts.client`). Stdlib and contracts only."""

from __future__ import annotations

from contracts.events import StatusEvent

__all__ = ["ClientError", "ConnectionLost", "JobFailed", "TraceIntegrityError"]


class ClientError(Exception):
    """Base of every client-side failure."""


class ConnectionLost(ClientError):
    """Redis stayed unreachable for longer than the client's reconnect timeout."""


class JobFailed(ClientError):
    """The job ended without a trace (failed, cancelled or dead); ``status`` says why."""

    def __init__(self, status: StatusEvent) -> None:
        self.status = status
        reason = f"{status.error_code.value}: {status.message}" if status.error_code else status.state.value
        super().__init__(f"job {status.job_id} ended {status.state.value} ({reason})")


class TraceIntegrityError(ClientError):
    """The received bytes do not match the terminal status (size / sha256), or chunks are missing."""
