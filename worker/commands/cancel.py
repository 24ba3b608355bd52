"""`trace-worker cancel JOB_ID`: ask the worker to stop a job (it ends `cancelled`).

Sets the job's cancel key; the worker stops within one batch. A job that already ended is left
alone (exit status 1). With ``--wait`` the command returns once the job has ended.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from contracts.states import JobState
from worker.commands._client_cli import EXIT_CODES, EXIT_TIMEOUT, add_redis_args, open_client, run_client

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``cancel`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cancel", help="cancel a job", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "job_id", metavar="JOB_ID", help="the job's id (printed by `trace-worker request`, or its --job-id)"
    )
    parser.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the job to end")
    add_redis_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker cancel``."""

    async def body() -> int:
        async with open_client(args) as client:
            job = client.job(args.job_id)
            current = await job.state()
            if current is not None and current.state.terminal:
                print(
                    f"trace-worker cancel: job {args.job_id} already ended {current.state.value}",
                    file=sys.stderr,
                )
                return 1
            await job.cancel()
            if current is None:
                print(f"cancel requested for {args.job_id} (no state yet: the job has not been picked up)")
            else:
                print(f"cancel requested for {args.job_id} (was {current.state.value})")
            if args.wait is None:
                return 0
            try:
                final = await job.wait(args.wait)
            except TimeoutError:
                print(
                    f"trace-worker cancel: job {args.job_id} still running after {args.wait:g} s",
                    file=sys.stderr,
                )
                return EXIT_TIMEOUT
            print(f"job {args.job_id} ended {final.state.value}")
            return 0 if final.state == JobState.CANCELLED else EXIT_CODES.get(final.state, 1)

    return run_client("cancel", body)
