"""What the service needs from the parts it drives, as small structural interfaces.

The real implementations are ``worker.pipeline`` + ``worker.source`` (wrapped by
:mod:`worker.service.generator`) and ``worker.sinks.blob``; narrow unit tests pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from contracts.request import TraceRequest

__all__ = [
    "BlobInfoLike",
    "BlobStoreLike",
    "BlobWriterLike",
    "ProgressLike",
    "StopRequested",
    "TraceGenerator",
]


class StopRequested(Exception):
    """The generator noticed ``should_stop()`` and stopped early."""


class ProgressLike(Protocol):
    """How far a trace is (``worker.pipeline.Progress``)."""

    @property
    def phase(self) -> str: ...
    @property
    def spans(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def threads_done(self) -> int: ...
    @property
    def threads_total(self) -> int: ...
    @property
    def percent(self) -> float: ...


class TraceGenerator(Protocol):
    """Produces a request's trace as whole-packet chunks; raises ``worker.errors`` classes."""

    def generate(
        self,
        request: TraceRequest,
        *,
        on_progress: Callable[[ProgressLike], None],
        should_stop: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[bytes]:
        """Chunks in order; raises :class:`StopRequested` when ``should_stop()`` said so."""
        ...

    async def ping(self) -> None:
        """Raises when the analytics service is unreachable (readiness)."""

    async def aclose(self) -> None: ...


class BlobInfoLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def uri(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


class BlobWriterLike(Protocol):
    async def write(self, data: bytes) -> None: ...
    async def commit(self) -> BlobInfoLike: ...
    async def abort(self) -> None: ...


class BlobStoreLike(Protocol):
    def uri(self, key: str) -> str: ...
    async def open_writer(self, key: str) -> BlobWriterLike: ...
    async def presign(self, key: str, expires_s: int) -> str | None: ...
    async def ping(self) -> None: ...
