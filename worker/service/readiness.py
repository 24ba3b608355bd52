"""Readiness probes of the dependencies, shared and cached so that probes cannot load them.

``/readyz`` may be polled by many clients (kubelet, load balancers, anyone who can reach the port).
Each poll must not become a Flight SQL query: the probes run at most once per
:data:`READY_TTL_S` (every caller in between gets the last answer), one run at a time (callers
during a run share it), all probes at once, each bounded by :data:`PROBE_TIMEOUT_S`. A caller
waits at most ``PROBE_TIMEOUT_S`` plus a little for a run, so probes never queue behind a stalled
dependency; a run that overstays is not restarted until it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["PROBE_TIMEOUT_S", "READY_TTL_S", "Readiness"]

#: Bound of each readiness probe (seconds).
PROBE_TIMEOUT_S = 3.0
#: How long one run's answer is reused (seconds).
READY_TTL_S = 2.0

Probe = Callable[[], Awaitable[object]]


class Readiness:
    """Cached, single-flight readiness checks.

    Args:
        probes: name -> coroutine function that raises when the dependency is not usable.
        ttl_s: how long an answer is reused.
        timeout_s: bound of each probe, and (plus 0.5 s) of each caller's wait.
    """

    def __init__(
        self, probes: Mapping[str, Probe], *, ttl_s: float = READY_TTL_S, timeout_s: float = PROBE_TIMEOUT_S
    ) -> None:
        self._probes = dict(probes)
        #: How long an answer is reused (seconds); 0 probes on every call.
        self.ttl_s = ttl_s
        self._timeout = timeout_s
        self._answer: dict[str, str] | None = None
        self._at = 0.0
        self._running: asyncio.Task[dict[str, str]] | None = None
        #: Probe runs so far (for tests and metrics).
        self.runs = 0

    async def failures(self) -> dict[str, str]:
        """Name -> reason of each failing probe (empty: all ready)."""
        if self._answer is not None and time.monotonic() - self._at < self.ttl_s:
            return self._answer
        if self._running is None:
            self._running = asyncio.create_task(self._run())
            self._running.add_done_callback(self._done)
        try:
            async with asyncio.timeout(self._timeout + 0.5):
                return await asyncio.shield(self._running)
        except TimeoutError:
            return {"probes": f"no answer within {self._timeout + 0.5:g} s"}

    def _done(self, task: asyncio.Task[dict[str, str]]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._answer, self._at = task.result(), time.monotonic()

    async def _run(self) -> dict[str, str]:
        self.runs += 1
        names = list(self._probes)
        results = await asyncio.gather(*(self._one(self._probes[n]) for n in names))
        return {n: r for n, r in zip(names, results, strict=True) if r is not None}

    async def _one(self, probe: Probe) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                await probe()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None

    async def aclose(self) -> None:
        """Cancel a run still going (shutdown)."""
        task = self._running
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
