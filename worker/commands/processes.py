"""`trace-worker processes`: list the processes the Flight SQL service knows, newest first.

trace-worker processes --flightsql grpc://127.0.0.1:50051 --limit 20
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

from worker.cli import UsageError
from worker.commands._flightsql_args import add_connection_args, config_from_args
from worker.model import ProcessInfo
from worker.source import FlightSqlConfig, FlightSqlSource

__all__ = ["format_table", "register"]


def register(subparsers: Any) -> None:
    """Add the ``processes`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "processes",
        help="list the processes of the Flight SQL service",
        description="List processes (id, exe, user, computer, start and last times), newest first.",
    )
    add_connection_args(parser)
    parser.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100)")
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
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


async def _list(config: FlightSqlConfig, limit: int) -> list[ProcessInfo]:
    source = FlightSqlSource(config)
    try:
        return await source.processes(limit)
    finally:
        await source.aclose()


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker processes``."""
    if not 1 <= args.limit <= 100_000:
        raise UsageError("--limit must be from 1 to 100000")
    config = config_from_args(args)
    print(format_table(asyncio.run(_list(config, args.limit))))
    return 0
