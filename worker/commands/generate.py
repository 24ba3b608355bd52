"""`trace-worker generate`: one trace from the Flight SQL service to a file, without Redis.

    trace-worker generate --flightsql grpc://127.0.0.1:50051 --process-id 34d7c06d-... -o trace.pb

The trace is written to a temporary file next to the output and renamed when complete, so the
output name never holds a partial trace. Progress goes to stderr: one updating line on a
terminal, a line every few seconds otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from contracts.request import SpanTypes
from worker.cli import UsageError
from worker.commands._flightsql_args import add_connection_args, config_from_args
from worker.commands._process_arg import add_process_id_args, process_id_of
from worker.errors import TraceWorkerError
from worker.pipeline import Progress, TraceSpec, generate_trace
from worker.settings import get_settings
from worker.source import FlightSqlConfig, FlightSqlSource

__all__ = ["parse_time", "register"]

#: The first nanosecond of year 10000 UTC: later times have no RFC 3339 form.
_MAX_NS = 253_402_300_800 * 1_000_000_000

_FRACTION = re.compile(r"^(?P<head>[^.]*T\d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,9}))?(?P<tail>.*)$")


def parse_time(text: str) -> int:
    """An RFC 3339 time with an offset (up to nanoseconds), or integer epoch nanoseconds, from
    1970-01-01 to the end of year 9999 UTC (telemetry is never older; later has no RFC 3339 form).

    Raises:
        UsageError: anything else.
    """
    ns = _parse_time(text)
    if not 0 <= ns < _MAX_NS:
        raise UsageError(f"time out of range (1970-01-01 to 9999-12-31 UTC): {text!r}")
    return ns


def _parse_time(text: str) -> int:
    stripped = text.strip()
    if re.fullmatch(r"-?\d+", stripped):
        return int(stripped)
    match = _FRACTION.match(stripped)
    try:
        if match is None:
            raise ValueError("not a time")
        stamp = datetime.fromisoformat(match["head"] + match["tail"].replace("z", "Z"))
    except ValueError as exc:
        raise UsageError(f"not an RFC 3339 time or epoch nanoseconds: {text!r}") from exc
    if stamp.utcoffset() is None:
        raise UsageError(f"times need an offset, e.g. 2026-11-26T10:00:00Z: {text!r}")
    fraction = int((match["frac"] or "0").ljust(9, "0"))
    return int(stamp.timestamp()) * 1_000_000_000 + fraction


def register(subparsers: Any) -> None:
    """Add the ``generate`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "generate",
        help="write one process's Perfetto trace to a file (no Redis)",
        description="Query the Flight SQL service and write the Perfetto trace of one process.",
    )
    add_process_id_args(parser)
    parser.add_argument(
        "--begin",
        metavar="T",
        help="RFC 3339 or epoch ns (default: the process's start or first recorded time)",
    )
    parser.add_argument("--end", metavar="T", help="RFC 3339 or epoch ns (default: last recorded time)")
    parser.add_argument(
        "--async-lookback",
        type=float,
        metavar="S",
        help="seconds before --begin to look for async spans still open at it "
        "(default: TRACE_WORKER_ASYNC_LOOKBACK_S, 900; 0: none)",
    )
    parser.add_argument(
        "--span-types",
        choices=[t.value for t in SpanTypes],
        default=SpanTypes.BOTH.value,
        help="default: both",
    )
    parser.add_argument("--logs", action="store_true", help="add the log entries as log messages")
    parser.add_argument("--metrics", action="store_true", help="add the measures as counter tracks")
    add_connection_args(parser, concurrency=True)
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the trace")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(handler=run)


class ProgressDisplay:
    """Progress on a stream: one rewritten line on a terminal; otherwise (a pipe, a log file) a line
    for each phase and at most every ``interval_s`` (2 s) within one."""

    def __init__(self, stream: TextIO, *, interval_s: float | None = None) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = interval_s if interval_s is not None else (0.1 if self._tty else 2.0)
        self._next = 0.0
        self._width = 0
        self._phase = ""

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.phase == "done"
        new_phase, self._phase = progress.phase != self._phase, progress.phase
        if now < self._next and not final and not new_phase:
            return
        self._next = now + self._interval
        line = (
            f"{progress.phase:<12} {progress.percent:5.1f}%  spans {progress.spans:,}  "
            f"bytes {progress.bytes:,}  threads {progress.threads_done}/{progress.threads_total}"
        )
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width) + ("\n" if final else ""))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Finish an unfinished terminal line (after an error)."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


async def _generate(
    config: FlightSqlConfig, spec: TraceSpec, out: Path, display: ProgressDisplay | None
) -> int:
    fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    temp = Path(temp_name)
    source = FlightSqlSource(config)
    written = 0
    try:
        with os.fdopen(fd, "wb") as file:
            async for chunk in generate_trace(source, spec, on_progress=display):
                file.write(chunk)
                written += len(chunk)
        os.replace(temp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    finally:
        await source.aclose()
        if display is not None:
            display.close()
    return written


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker generate``."""
    config = config_from_args(args)
    settings = get_settings()
    lookback_s = settings.async_lookback_s if args.async_lookback is None else args.async_lookback
    if not 0 <= lookback_s <= 7 * 24 * 3600:
        raise UsageError("--async-lookback must be from 0 to 604800 seconds")
    spec = TraceSpec(
        process_id=process_id_of(args),
        begin_ns=parse_time(args.begin) if args.begin else None,
        end_ns=parse_time(args.end) if args.end else None,
        span_types=SpanTypes(args.span_types),
        chunk_size=settings.chunk_size,
        async_lookback_ns=int(lookback_s * 1e9),
        logs=args.logs,
        metrics=args.metrics,
        max_log_entries=settings.max_log_entries,
        max_measures=settings.max_measures,
    )
    out = Path(args.output)
    if out.is_dir():
        raise UsageError(f"{out} is a directory")
    if not out.parent.is_dir():
        raise UsageError(f"no such directory: {out.parent}")
    display = None if args.quiet else ProgressDisplay(sys.stderr)
    # A one-shot command: the modules and objects loaded by now live until it exits, so the cyclic
    # collector need not walk them again and again; the engine makes few container objects (its data
    # is in numpy and Arrow buffers), so rarer young collections cost no memory.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    started = time.monotonic()
    try:
        size = asyncio.run(_generate(config, spec, out, display))
    except TraceWorkerError:
        raise
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if not args.quiet:
        print(f"wrote {out} ({size:,} bytes) in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0
