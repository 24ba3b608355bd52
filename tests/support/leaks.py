"""No test may leave a process running into the next one.

Every process the test session starts (directly, or a grandchild such as the demo's redis-server)
inherits :data:`MARKER` in its environment. :func:`new_marked` lists the marked processes that
appeared since a snapshot; the autouse fixture in tests/conftest.py kills those still running when
a test ends and fails that test, naming them, so a leak is reported where it happened, not as a
ResourceWarning in whichever test the garbage collector runs next.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

__all__ = ["MARKER", "install_marker", "kill_all", "new_marked", "pids"]

#: The environment variable every process of this test session inherits.
MARKER = "TW_TEST_SESSION"


def install_marker() -> str:
    """Set :data:`MARKER` in this process's environment (inherited by every child); its value."""
    value = os.environ.get(MARKER) or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[MARKER] = value
    return value


def pids() -> set[int]:
    """Every process id visible in /proc now."""
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _describe(pid: int, marker: bytes) -> str | None:
    """The command line of ``pid`` when it is a live (not zombie) process carrying ``marker``."""
    proc = Path(f"/proc/{pid}")
    try:
        if (proc / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
            return None  # exited; only its parent's wait() is missing
        if marker not in (proc / "environ").read_bytes().split(b"\0"):
            return None
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError):
        return None  # gone, or not ours to read


def new_marked(before: set[int]) -> dict[int, str]:
    """Live processes carrying this session's marker that were not in ``before``: pid -> command."""
    value = os.environ.get(MARKER)
    if not value:
        return {}
    marker = f"{MARKER}={value}".encode()
    found = {}
    for pid in pids() - before - {os.getpid()}:
        described = _describe(pid, marker)
        if described is not None:
            found[pid] = described
    return found


def kill_all(found: dict[int, str]) -> None:
    """SIGKILL each process (those that are our children stay zombies until their owner reaps them)."""
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
