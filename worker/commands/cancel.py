"""`trace-worker cancel JOB_ID`: stop a job for every request attached to it, or detach one request.

Adds an entry on ``<prefix>:cancels`` (docs/PROTOCOL.md §5) and prints the worker's answer. With
``--request-id`` only that request leaves the job (it goes on while other requests want it). A job
whose requests still wait for a worker is cancelled when a worker picks them up (answer
``pending``). A job that already ended or is unknown is reported (exit status 1) and nothing is
left behind. With ``--wait S`` the command returns once the job has ended, or after S seconds in
all (exit status 5). No answer from a worker within 10 s (or S) is exit status 5 too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from contracts.client import TraceClient
from contracts.events import CancelOutcome, StatusEvent
from contracts.states import JobState
from worker.commands._client_cli import EXIT_CODES, EXIT_TIMEOUT, add_redis_args, open_client, run_client

__all__ = ["register"]

#: How long to wait for a worker to answer the cancel entry.
ANSWER_TIMEOUT_S = 10.0


def register(subparsers: Any) -> None:
    """Add the ``cancel`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cancel", help="cancel a job", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "job_id", metavar="JOB_ID", help="the job's id (printed by `trace-worker request`, or its --job-id)"
    )
    parser.add_argument("--request-id", metavar="ID", help="detach only this request (the id XADD returned)")
    parser.add_argument("--wait", type=float, metavar="S", help="wait up to S seconds for the job to end")
    add_redis_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker cancel``."""

    async def body() -> int:
        async with open_client(args) as client:
            job = client.job(args.job_id)
            job.request_id = args.request_id
            current = await job.state()
            if current is not None and current.state.terminal and args.request_id is None:
                # The worker would answer already_ended: nothing runs and no request waits.
                print(
                    f"trace-worker cancel: job {args.job_id} already ended {current.state.value}",
                    file=sys.stderr,
                )
                return 1
            # --wait bounds the whole command, the worker's answer included.
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer_timeout = ANSWER_TIMEOUT_S if args.wait is None else min(ANSWER_TIMEOUT_S, args.wait)
            answer = await job.cancel(timeout=answer_timeout)
            if answer is None:
                print(
                    f"trace-worker cancel: no worker answered within {answer_timeout:g} s "
                    f"(is a worker running with prefix {client.keys.prefix!r}?)",
                    file=sys.stderr,
                )
                return EXIT_TIMEOUT
            if answer.outcome in (CancelOutcome.NOT_FOUND, CancelOutcome.ALREADY_ENDED):
                print(f"trace-worker cancel: job {args.job_id}: {answer.detail}", file=sys.stderr)
                return 1
            print(f"cancel {answer.outcome.value} for {args.job_id} ({answer.detail})")
            ends_job = answer.outcome == CancelOutcome.CANCELLED or (
                answer.outcome == CancelOutcome.PENDING and args.request_id is None
            )
            if args.wait is None or not ends_job:
                return 0
            final = await _until_ended(client, args.job_id, max(0.0, args.wait - (loop.time() - started)))
            if final is None:
                print(
                    f"trace-worker cancel: job {args.job_id} has not ended after {args.wait:g} s",
                    file=sys.stderr,
                )
                return EXIT_TIMEOUT
            print(f"job {args.job_id} ended {final.state.value}")
            return 0 if final.state == JobState.CANCELLED else EXIT_CODES.get(final.state, 1)

    return run_client("cancel", body)


async def _until_ended(client: TraceClient, job_id: str, timeout: float) -> StatusEvent | None:  # noqa: ASYNC109
    """The job's status once it is terminal (its state hash, with no request for it waiting), or
    None after ``timeout`` seconds; woken by each new entry of the job's status stream."""
    redis, key = client.redis, client.keys.status_stream(job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    newest: Any = await redis.xrevrange(key, count=1)
    last = newest[0][0] if newest else "0-0"
    while True:
        current = await client.job(job_id).state()
        if current is not None and current.state.terminal:
            return current
        left = deadline - loop.time()
        if left <= 0:
            return None
        reply: Any = await redis.xread({key: last}, count=100, block=max(1, int(min(left, 1.0) * 1000)))
        for _key, entries in reply or []:
            last = entries[-1][0]
