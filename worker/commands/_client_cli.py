"""Shared parts of the client commands (request, status, cancel, jobs, demo): Redis options, one-line
errors, time parsing and the live progress line."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisClusterException, RedisError

from contracts.client import TraceClient
from contracts.client_errors import ClientError
from contracts.events import ProgressEvent, StatusEvent
from contracts.keys import DEFAULT_PREFIX
from contracts.states import JobState
from contracts.urls import mask_url
from worker.cli import UsageError
from worker.commands._terminal import safe
from worker.settings import load_settings, redis_url_problem

__all__ = [
    "EXIT_CODES",
    "ProgressLine",
    "add_redis_args",
    "format_size",
    "open_client",
    "parse_time",
    "run_client",
]

T = TypeVar("T")

#: Exit status of `request` (and `status --exit-code`) by how the job ended.
EXIT_CODES: dict[JobState, int] = {
    JobState.SUCCEEDED: 0,
    JobState.FAILED: 1,
    JobState.CANCELLED: 3,
    JobState.DEAD: 4,
}
#: Exit status when waiting timed out (the job may still finish).
EXIT_TIMEOUT = 5
#: Exit status when Redis is unreachable or the client failed.
EXIT_CLIENT = 1


def add_redis_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis URL (default: TRACE_WORKER_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    parser.add_argument(
        "--redis-cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the Redis URL names one node of a Redis Cluster (default: TRACE_WORKER_REDIS_CLUSTER or no)",
    )
    parser.add_argument(
        "--prefix", metavar="P", help="key prefix (default: TRACE_WORKER_KEY_PREFIX or traces)"
    )


def open_client(args: argparse.Namespace) -> TraceClient:
    """A client on the URL and prefix from the options or the settings. Call inside the event loop.

    Raises:
        SettingsError: misspelt or invalid settings (checked even when both options are given).
    """
    settings = load_settings()
    url = args.redis_url or settings.redis_url
    prefix = args.prefix or settings.key_prefix
    cluster = settings.redis_cluster if args.redis_cluster is None else args.redis_cluster
    # Blob-only traces from a local-folder store are read only from the settings' blob folder.
    file_root = settings.blob_url.removeprefix("file://") if settings.blob_url.startswith("file://") else None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"not a Redis URL (redis://host:port/db): {mask_url(url)!r}")
    if args.redis_url and (problem := redis_url_problem(args.redis_url)) is not None:
        raise UsageError(f"bad --redis-url: {problem}")  # the setting's own check, in the same words
    try:
        return TraceClient(
            settings.redis_url_with_credentials(url),
            prefix or DEFAULT_PREFIX,
            reconnect_timeout_s=30,
            file_root=file_root,
            cluster=cluster,
        )
    except ValueError as exc:
        # The client's message names the (masked) URL already: "bad Redis URL redis://...: why".
        raise UsageError(str(exc)) from exc


def run_client(command: str, body: Callable[[], Awaitable[int]]) -> int:
    """Run ``body`` on a new event loop; client and Redis failures become one line, exit status 1
    (2 when the server's cluster mode and ``--redis-cluster`` disagree: a configuration error)."""
    try:
        return asyncio.run(_guarded(body))
    except ClientError as exc:
        if (wrong := cluster_mode_problem(exc)) is not None:
            print(f"trace-worker {command}: {wrong}", file=sys.stderr)
            return 2
        print(f"trace-worker {command}: {safe(exc)}", file=sys.stderr)
        return EXIT_CLIENT


def cluster_mode_problem(exc: BaseException) -> str | None:
    """What is wrong when ``exc`` (or an error it was raised from) says the server's cluster mode
    is not the client's: a MOVED reply (also inside a pipeline's error) to a plain client, or
    redis-py's cluster client finding a standalone server. None for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, MovedError):
            return "this Redis is a Redis Cluster node: use --redis-cluster (TRACE_WORKER_REDIS_CLUSTER=true)"
        if isinstance(cause, RedisClusterException) and "cluster mode is not enabled" in str(cause).lower():
            return "not a Redis Cluster node: drop --redis-cluster (TRACE_WORKER_REDIS_CLUSTER=false)"
        cause = cause.__cause__ or cause.__context__
    return None


async def _guarded(body: Callable[[], Awaitable[T]]) -> T:
    try:
        return await body()
    except BrokenPipeError:
        raise  # our stdout's reader went away (`| head`), not Redis (its errors are RedisErrors)
    except (RedisConnectionError, OSError) as exc:
        raise ClientError(f"cannot reach Redis: {exc}") from exc
    except RedisClusterException as exc:  # not a RedisError
        raise ClientError(f"Redis Cluster failed: {exc}") from exc
    except RedisError as exc:
        raise ClientError(f"Redis failed: {exc}") from exc


def parse_time(text: str) -> datetime:
    """RFC 3339 with an offset (``2026-11-26T10:00:00Z``, ``...+01:00``, fractions allowed), or
    integer epoch nanoseconds as `generate` takes them (the request carries microseconds: finer
    digits are dropped).

    Raises:
        UsageError: not such a time.
    """
    if re.fullmatch(r"\d+", text.strip()):
        seconds, nanos = divmod(int(text.strip()), 1_000_000_000)
        try:
            return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)
        except (OverflowError, OSError, ValueError) as exc:
            raise UsageError(f"epoch nanoseconds out of range: {text!r}") from exc
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise UsageError(
            f"not an RFC 3339 time (e.g. 2026-11-26T10:00:00Z) or epoch nanoseconds: {text!r}"
        ) from exc
    if stamp.utcoffset() is None:
        raise UsageError(f"times need an offset, e.g. 2026-11-26T10:00:00Z: {text!r}")
    return stamp


def format_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # unreachable


class ProgressLine:
    """Live job progress on stderr: phase, spans, bytes, percent, elapsed.

    On a terminal one line is rewritten in place (at most 10 times a second); otherwise a line is
    printed for each status change, for each new phase, and at most every 2 seconds within a phase.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._enabled = enabled
        self._started = time.monotonic()
        self._next = 0.0
        self._width = 0
        self._state = "waiting"
        self._attempt = 0
        self._phase: tuple[int, str] = (0, "")

    def __call__(self, event: StatusEvent | ProgressEvent) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if isinstance(event, StatusEvent):
            self._state, self._attempt = event.state.value, event.attempt
            self._emit(self._status_line(event), force=True)
            return
        new_phase, self._phase = (event.attempt, event.phase) != self._phase, (event.attempt, event.phase)
        if now < self._next and not (new_phase and not self._tty):
            return
        self._next = now + (0.1 if self._tty else 2.0)
        bar_width = 20
        filled = int(bar_width * min(max(event.percent, 0.0), 100.0) / 100)
        line = (
            f"[{'#' * filled}{'.' * (bar_width - filled)}] {event.percent:5.1f}%  {event.phase:<9} "
            f"{event.spans:>12,} spans  {format_size(event.bytes):>10}  "
            f"threads {event.threads_done}/{event.threads_total}  {self._elapsed()}"
        )
        if event.attempt > 1:
            line += f"  attempt {event.attempt}"
        self._emit(line)

    def _status_line(self, event: StatusEvent) -> str:
        line = f"{event.state.value:<9} attempt {event.attempt}  {self._elapsed()}"
        if event.detail:
            line += f"  ({safe(event.detail)})"
        return line

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self._started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def _emit(self, line: str, *, force: bool = False) -> None:
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        if force:
            self._next = 0.0

    def close(self) -> None:
        """End a rewritten line so what follows starts on a fresh one."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def describe(status: StatusEvent) -> list[tuple[str, Any]]:
    """The fields of a status worth showing, in order."""
    rows: list[tuple[str, Any]] = [
        ("job", status.job_id),
        ("state", status.state.value),
        ("attempt", status.attempt),
        ("time", status.time.isoformat()),
    ]
    optional = {
        "detail": status.detail,
        "uri": status.uri,
        "url": status.url,
        "size": f"{format_size(status.size)} ({status.size:,} bytes)" if status.size is not None else None,
        "sha256": status.sha256,
        "spans": f"{status.spans:,}" if status.spans is not None else None,
        "packets": f"{status.packets:,}" if status.packets is not None else None,
        "duration": f"{status.duration_s:.2f} s" if status.duration_s is not None else None,
        "error": status.error_code.value if status.error_code else None,
        "message": status.message,
        "retryable": status.retryable,
    }
    rows += [(k, v) for k, v in optional.items() if v is not None]
    rows += [(f"label {k}", v) for k, v in sorted(status.labels.items())]
    return rows
