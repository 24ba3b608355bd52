"""`trace-worker request PROCESS_ID`: ask the workers for a trace, follow it, write the file.

    trace-worker request 34d7c06d-3163-4111-863e-c5fc09d22d51 --begin 2026-11-26T10:00:00Z -o run.pftrace

Shows live progress on stderr, writes the trace (verified against the job's size and sha256),
prints the job id, path and size. Exit status: 0 succeeded, 1 failed (or Redis unreachable),
2 usage error, 3 cancelled, 4 dead, 5 timed out waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from redis.exceptions import ResponseError

from contracts.client import JobFailed, TraceClient
from contracts.events import ProgressEvent, StatusEvent
from contracts.request import SpanTypes, TraceRequest
from contracts.states import JobState
from worker.cli import UsageError
from worker.commands._client_cli import (
    EXIT_CODES,
    EXIT_TIMEOUT,
    ProgressLine,
    add_redis_args,
    format_size,
    open_client,
    parse_time,
    run_client,
)
from worker.commands._process_arg import add_process_id_args, process_id_of
from worker.commands._terminal import safe

__all__ = ["register"]

PERFETTO_HINT = "open it in the Perfetto UI: https://ui.perfetto.dev -> Open trace file -> {path}"


def register(subparsers: Any) -> None:
    """Add the ``request`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "request",
        help="request a trace from the workers and write it to a file",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="the trace is read from its chunks on Redis while they last (chunk_ttl_s after the job); "
        "after that, or with --blob-only, from the blob store: the status's presigned url, or, for a "
        "local-folder store (file://), the worker's blob folder, which this command reads only when "
        "TRACE_WORKER_BLOB_URL=file://<that folder> is set here too. exit status: 0 succeeded, 1 failed "
        "or Redis unreachable, 2 usage error, 3 cancelled, 4 dead, 5 timed out waiting",
    )
    add_process_id_args(parser)
    parser.add_argument(
        "--begin", metavar="T", help="RFC 3339 with offset, or epoch ns (default: the process's first time)"
    )
    parser.add_argument(
        "--end", metavar="T", help="RFC 3339 with offset, or epoch ns (default: the process's last time)"
    )
    parser.add_argument(
        "--span-types", choices=[t.value for t in SpanTypes], default="both", help="default: both"
    )
    parser.add_argument("--logs", action="store_true", help="add the log entries as log messages")
    parser.add_argument("--metrics", action="store_true", help="add the measures as counter tracks")
    parser.add_argument("--job-id", metavar="ID", help="idempotency key (default: derived from the request)")
    parser.add_argument("--label", action="append", default=[], metavar="K=V", help="label echoed in events")
    parser.add_argument("-o", "--output", metavar="FILE", help="trace file (default: <job id>.pftrace)")
    parser.add_argument("--no-wait", action="store_true", help="submit, print the job id and exit")
    parser.add_argument(
        "--blob-only", action="store_true", help="no chunks on Redis; fetch from the blob store"
    )
    parser.add_argument(
        "--compress",
        choices=["gzip", "none"],
        help="how the blob is stored (default: the worker's setting); the file written here is plain",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up waiting after S seconds (default: wait until the job ends)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_redis_args(parser)
    parser.set_defaults(handler=run)


def build_request(args: argparse.Namespace) -> TraceRequest:
    """The request from the command line; every mistake is a one-line UsageError."""
    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"labels are KEY=VALUE: {item!r}")
        labels[key] = value
    try:
        return TraceRequest(
            process_id=process_id_of(args),
            begin=parse_time(args.begin) if args.begin else None,
            end=parse_time(args.end) if args.end else None,
            span_types=SpanTypes(args.span_types),
            job_id=args.job_id,
            chunks=not args.blob_only,
            labels=labels,
            logs=args.logs,
            metrics=args.metrics,
            compress=args.compress,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{field}: {message}" if field else message) from exc


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker request``."""
    request = build_request(args)
    output = Path(args.output or f"{request.effective_job_id()}.pftrace")
    if output.is_dir():
        raise UsageError(f"{output} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"no such directory: {output.parent}")

    async def body() -> int:
        async with open_client(args) as client:
            await client.ping()
            job = await client.submit(request)
            if args.no_wait:
                print(job.job_id)
                return 0
            print(f"job {job.job_id}", file=sys.stderr)
            display = ProgressLine(enabled=not args.quiet)
            picked = asyncio.Event()

            def on_event(event: StatusEvent | ProgressEvent) -> None:
                if not isinstance(event, StatusEvent) or event.request_id in (job.request_id, None):
                    picked.set()
                display(event)

            watchdog = asyncio.create_task(_warn_unpicked(client, picked))
            try:
                status = await job.download(output, timeout=args.timeout, on_event=on_event)
            except JobFailed as exc:
                display.close()
                _report_failure(exc)
                return EXIT_CODES.get(exc.status.state, 1)
            except TimeoutError:
                display.close()
                print(
                    f"trace-worker request: gave up waiting after {args.timeout:g} s; the job goes on "
                    f"(trace-worker status {job.job_id})",
                    file=sys.stderr,
                )
                return EXIT_TIMEOUT
            finally:
                watchdog.cancel()
            display.close()
        path = output.resolve()  # noqa: ASYNC240 - one syscall after the download
        size = status.size if status.size is not None else path.stat().st_size
        print(f"job     {status.job_id}")
        print(f"file    {path}")
        print(f"size    {format_size(size)} ({size:,} bytes)")
        if status.spans is not None:
            print(f"spans   {status.spans:,}")
        print(PERFETTO_HINT.format(path=path))
        return EXIT_CODES[JobState.SUCCEEDED]

    return run_client("request", body)


#: How long a request may wait for its pickup acknowledgement before the command says why.
PICKUP_WARNING_S = 5.0


async def _warn_unpicked(client: TraceClient, picked: asyncio.Event) -> None:
    """After PICKUP_WARNING_S without an answer, say whether any worker consumes the prefix."""
    try:
        async with asyncio.timeout(PICKUP_WARNING_S):
            await picked.wait()
        return
    except TimeoutError:
        pass
    print(f"trace-worker request: {await pickup_diagnosis(client)}", file=sys.stderr)


async def pickup_diagnosis(client: TraceClient) -> str:
    """Why a request on ``<prefix>:requests`` is not picked up (docs/PROTOCOL.md §2.2)."""
    keys = client.keys
    waited = f"not picked up after {PICKUP_WARNING_S:g} s"
    try:
        groups: Any = await client.redis.xinfo_groups(keys.requests)
    except ResponseError:
        groups = []
    group = next((g for g in groups if _text(g.get("name")) == keys.group), None)
    if group is None:
        return (
            f"{waited}: no worker has ever consumed prefix {keys.prefix!r} (no group {keys.group} on "
            f"{keys.requests}); start `trace-worker run` or check --prefix"
        )
    consumers: Any = await client.redis.xinfo_consumers(keys.requests, keys.group)
    active = [c for c in consumers if int(c.get("idle", 0)) < 60_000]
    if not active:
        return (
            f"{waited}: no worker is consuming prefix {keys.prefix!r} ({len(consumers)} consumer(s) of "
            f"{keys.group}, none active in the last minute); the request waits for one"
        )
    lag = group.get("lag")
    # lag: entries not yet delivered to the group, this one (and any sent after it) included
    ahead = f"{lag} request(s) not picked up yet, yours included" if lag is not None else "requests queued"
    return f"{waited}: {len(active)} worker(s) on prefix {keys.prefix!r} are busy; {ahead}, still waiting"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _report_failure(exc: JobFailed) -> None:
    status = exc.status
    line = f"trace-worker request: job {status.job_id} {status.state.value}"
    if status.error_code is not None:
        line += f": {status.error_code.value}"
    if status.message:
        line += f": {status.message}"
    if status.retryable:
        line += " (retryable: submitting again may succeed)"
    print(safe(line), file=sys.stderr)
