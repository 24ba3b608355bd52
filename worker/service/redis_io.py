"""Redis plumbing shared by the service: transient-error detection and a retry loop.

A Redis restart or a network blip shows up as ``ConnectionError``/``TimeoutError`` (``LOADING``
after a restart with persistence is a ``BusyLoadingError``, a ``ConnectionError``). Writes that
must not be lost (terminal status, acknowledgements) go through :func:`retry_redis`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import exceptions as redis_errors

__all__ = ["TRANSIENT", "is_transient", "retry_redis"]

log = logging.getLogger("worker.service")

#: Exceptions after which the same command may succeed later.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    ConnectionError,
    TimeoutError,
)

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


async def retry_redis(
    op: Callable[[], Awaitable[T]], *, what: str, give_up_after_s: float = 120.0, first_delay_s: float = 0.05
) -> T:
    """Run ``op`` until it does not fail with a transient Redis error (exponential backoff, capped at 2 s).

    Raises:
        The last transient error once ``give_up_after_s`` has passed.
    """
    deadline = time.monotonic() + give_up_after_s
    delay = first_delay_s
    while True:
        try:
            return await op()
        except TRANSIENT as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("redis unavailable during %s (%s); retrying in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
