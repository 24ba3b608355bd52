"""`trace-worker status JOB_ID`: the job's latest state, from its state hash (one Redis call).

Exit status 0 when the job is known, 1 when it is unknown (never submitted, not picked up yet, or
expired after the job TTL).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.commands._client_cli import add_redis_args, describe, open_client, run_client
from worker.commands._terminal import safe

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``status`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status", help="show a job's latest state", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "job_id", metavar="JOB_ID", help="the job's id (printed by `trace-worker request`, or its --job-id)"
    )
    parser.add_argument("--json", action="store_true", help="the status as one JSON object")
    add_redis_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker status``."""

    async def body() -> int:
        async with open_client(args) as client:
            status = await client.job(args.job_id).state()
        if status is None:
            print(
                f"trace-worker status: unknown job {args.job_id} (never submitted, or expired)",
                file=sys.stderr,
            )
            return 1
        if args.json:
            print(json.dumps(status.model_dump(mode="json", exclude_none=True), sort_keys=True))
        else:
            for key, value in describe(status):
                print(f"{key:<10} {safe(value)}")
        return 0

    return run_client("status", body)
