"""`trace-worker jobs`: recently active jobs and their latest states, from the events stream."""

from __future__ import annotations

import argparse
from typing import Any

from worker.commands._client_cli import add_redis_args, format_size, open_client, run_client
from worker.commands._terminal import safe

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``jobs`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "jobs", help="list recent jobs and their states", description=__doc__
    )
    parser.add_argument("-n", "--count", type=int, default=20, metavar="N", help="how many (default 20)")
    add_redis_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker jobs``."""

    async def body() -> int:
        async with open_client(args) as client:
            recent = await client.recent_jobs(max(args.count, 1))
        if not recent:
            print("no jobs yet")
            return 0
        print(f"{'JOB':<36} {'STATE':<9} {'ATT':>3}  {'TIME (UTC)':<19}  INFO")
        for status in recent:
            info = ""
            if status.error_code is not None:
                info = f"{status.error_code.value}: {status.message or ''}"
            elif status.size is not None:
                info = format_size(status.size)
            elif status.detail:
                info = status.detail
            when = status.time.strftime("%Y-%m-%d %H:%M:%S")
            job = safe(status.job_id)
            print(f"{job:<36} {status.state.value:<9} {status.attempt:>3}  {when:<19}  {safe(info)}")
        return 0

    return run_client("jobs", body)
