"""`trace-worker cancel JOB_ID`: stop a job for every request attached to it, or detach one request.

Adds an entry on ``<prefix>:cancels`` (docs/PROTOCOL.md §5) and prints the worker's answer. With
``--request-id`` only that request leaves the job (it goes on while other requests want it). A job
that already ended or is unknown is reported (exit status 1) and nothing is left behind. With
``--wait`` the command returns once the job has ended.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from contracts.client import JobHandle, WaitTimeout
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
                print(
                    f"trace-worker cancel: job {args.job_id} already ended {current.state.value}",
                    file=sys.stderr,
                )
                return 1
            answer = await job.cancel(timeout=ANSWER_TIMEOUT_S)
            if (
                answer is not None
                and answer.outcome == CancelOutcome.NOT_FOUND
                and args.request_id is None
                and current is not None
                and current.state == JobState.QUEUED
            ):
                # The job's request still waits on the request stream (a job-level cancel names no
                # request to hold back): cancel the job once a worker has picked it up.
                await _until_picked_up(job, args.wait or ANSWER_TIMEOUT_S)
                answer = await job.cancel(timeout=ANSWER_TIMEOUT_S)
            if answer is None:
                print(
                    f"trace-worker cancel: no worker answered within {ANSWER_TIMEOUT_S:g} s "
                    f"(is a worker running with prefix {client.keys.prefix!r}?)",
                    file=sys.stderr,
                )
                return 1
            if answer.outcome in (CancelOutcome.NOT_FOUND, CancelOutcome.ALREADY_ENDED):
                print(f"trace-worker cancel: job {args.job_id}: {answer.detail}", file=sys.stderr)
                return 1
            print(f"cancel {answer.outcome.value} for {args.job_id} ({answer.detail})")
            if args.wait is None or answer.outcome != CancelOutcome.CANCELLED:
                return 0
            job.request_id = None
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


async def _until_picked_up(job: JobHandle, timeout: float) -> None:  # noqa: ASYNC109
    """Return once the job has a status other than ``queued`` (or after ``timeout`` seconds)."""
    with contextlib.suppress(WaitTimeout):
        async for event in job.events(timeout=timeout):
            if isinstance(event, StatusEvent) and event.state != JobState.QUEUED:
                return
