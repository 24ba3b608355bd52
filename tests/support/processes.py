"""Command-line processes for tests, always reaped: :func:`running` kills the process and everything
it started (its own process group) when the block ends, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["running", "stop_group", "stop_tracked", "track"]

_tracked: list[asyncio.subprocess.Process] = []


async def stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group of ``proc`` (it and any child it left behind), wait for ``proc`` and
    read its pipes to the end, so neither a process nor a pipe outlives the test."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, ValueError):
        await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode is None:
        await proc.wait()


def terminal_signals() -> None:
    """In the child before exec: SIGINT, SIGHUP, SIGTERM and SIGQUIT as a terminal's user has them.

    A suite started with ``&`` or ``nohup`` (a CI script) has SIGINT/SIGHUP ignored, and an ignored
    signal stays ignored across exec: the program under test would never see the test's Ctrl-C.
    """
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


@contextlib.asynccontextmanager
async def running(*argv: str, **kwargs: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """``asyncio.create_subprocess_exec(*argv, **kwargs)`` in a new session (its own process group);
    on exit from the block the group is killed and the process reaped.

    Signals the test sends with ``proc.send_signal`` still go to the process alone.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, start_new_session=True, preexec_fn=terminal_signals, **kwargs
    )
    try:
        yield proc
    finally:
        await stop_group(proc)


def track(proc: asyncio.subprocess.Process) -> asyncio.subprocess.Process:
    """Have :func:`stop_tracked` stop ``proc`` (started with ``start_new_session=True``) at test end."""
    _tracked.append(proc)
    return proc


async def stop_tracked() -> None:
    """Stop every process passed to :func:`track` (call when a test ends)."""
    while _tracked:
        await stop_group(_tracked.pop())
