"""`trace-worker processes`: list the processes the Flight SQL service knows, newest first.

trace-worker processes --flightsql grpc://127.0.0.1:50051 --limit 20 [--json]

``--json`` prints one JSON array for scripts: every field of :class:`worker.model.ProcessInfo`
(times as epoch nanoseconds ``*_time_ns`` and as RFC 3339 ``start_time``/``first_time``/``last_time``).
From Python, :func:`worker.source.list_processes` returns the same list.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from worker.cli import UsageError
from worker.commands._flightsql_args import add_connection_args, config_from_args
from worker.commands._terminal import safe
from worker.model import ProcessInfo
from worker.source import list_processes

__all__ = ["format_json", "format_table", "register"]


def register(subparsers: Any) -> None:
    """Add the ``processes`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "processes",
        help="list the processes of the Flight SQL service",
        description="List processes (id, exe, user, computer, start and last times), newest first.",
    )
    add_connection_args(parser)
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100)")
    parser.add_argument("--json", action="store_true", help="one JSON array (every field) instead of a table")
    parser.set_defaults(handler=run)


def _time(ns: int | None) -> str:
    if ns is None:
        return "-"
    seconds, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac // 1000:06d}Z"


def format_table(processes: list[ProcessInfo]) -> str:
    """Processes as an aligned text table with a header line."""
    header = ("PROCESS_ID", "EXE", "USER", "COMPUTER", "START", "LAST")
    rows = [
        (p.process_id, p.exe, p.username, p.computer, _time(p.start_time_ns), _time(p.last_time_ns))
        for p in processes
    ]
    widths = [max(len(safe(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(safe(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def format_json(processes: list[ProcessInfo]) -> str:
    """Processes as a JSON array: every field, plus the times in RFC 3339 (null when unknown)."""
    rows = []
    for p in processes:
        row: dict[str, object] = dataclasses.asdict(p)
        for name in ("start_time", "first_time", "last_time"):
            ns = getattr(p, f"{name}_ns")
            row[name] = None if ns is None else _time(ns)
        rows.append(row)
    return json.dumps(rows, indent=2)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker processes``."""
    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be from 1 to 100000")
    config = config_from_args(args)
    processes = asyncio.run(list_processes(config, args.limit))
    print(format_json(processes) if args.json else format_table(processes))
    return 0
