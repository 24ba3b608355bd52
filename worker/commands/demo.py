"""`trace-worker demo`: the whole product on one machine, with nothing running beforehand.

    trace-worker demo -o demo.pftrace

Starts a private redis-server (unless a Redis is named with --redis-url or TRACE_WORKER_REDIS_URL;
then its keys go under a private prefix, removed afterwards), the development Flight SQL server with
a small lake and a worker (subprocesses on free loopback ports); requests the trace of a sample
process through the client library, shows progress, writes the file, stops every service and prints
a summary. Ctrl-C (SIGINT) and SIGTERM stop everything it started and remove its work folder; the
services' logs are kept only when something fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from contracts.client import JobFailed, TraceClient
from contracts.events import StatusEvent
from contracts.request import TraceRequest
from contracts.urls import mask_url
from worker.cli import UsageError
from worker.commands._client_cli import ProgressLine, format_size
from worker.commands._demo_stack import SOURCE_TUNING, DemoStack, StackError
from worker.settings import Settings, load_settings

__all__ = ["register"]

PROCESS_KINDS = ("small", "typical", "large", "wide")


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run a private Redis, the devserver and a worker, and trace a sample process",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "-o", "--output", default="demo.pftrace", metavar="FILE", help="default: demo.pftrace"
    )
    parser.add_argument(
        "--process",
        choices=PROCESS_KINDS,
        default="small",
        help="sample process kind (default: small, ~10k spans)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="give up after S seconds (default 600)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this Redis instead of a private redis-server (default: TRACE_WORKER_REDIS_URL when set)",
    )
    parser.add_argument(
        "--gateway",
        action="store_true",
        help="also start the HTTP gateway and its web page (docs/GATEWAY.md), print its URL and keep "
        "everything running until Ctrl-C",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker demo``."""
    settings = load_settings()
    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: not a file in an existing directory")
    redis_url = _named_redis(args, settings)
    if redis_url is None and shutil.which("redis-server") is None:
        raise UsageError(NO_REDIS_SERVER)
    workdir = Path(tempfile.mkdtemp(prefix="trace-worker-demo-"))
    ok = False
    terminated: list[int] = []
    with _sigterm_as_interrupt(terminated):
        try:
            code, summary = asyncio.run(_demo(args, settings, redis_url, output, workdir))
            ok = code == 0
            if summary is not None:
                _print_summary(summary)
            return code
        except (KeyboardInterrupt, UsageError):
            ok = True  # everything was stopped; nothing to look at
            if terminated:
                _say("trace-worker demo: terminated")
                return 128 + signal.SIGTERM
            raise
        finally:
            if ok or not _has_logs(workdir):
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                _say(f"trace-worker demo: service logs kept in {workdir}")


NO_REDIS_SERVER = (
    "no redis-server on PATH to start a private Redis; install one (Debian/Ubuntu: sudo apt-get "
    "install redis-server, or scripts/dev setup) or name a Redis with --redis-url or "
    "TRACE_WORKER_REDIS_URL"
)


def _named_redis(args: argparse.Namespace, settings: Settings) -> str | None:
    """The Redis the user named (``--redis-url``, or TRACE_WORKER_REDIS_URL in the environment or
    .env); None: start a private one. The default URL is never used, so a Redis that happens to
    answer on 127.0.0.1:6379 is left alone."""
    if args.redis_url:
        return str(args.redis_url)
    if "redis_url" in settings.model_fields_set:
        return settings.redis_url
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt(seen: list[int]) -> Iterator[None]:
    """While the demo runs, SIGTERM does what Ctrl-C does (stop every service, remove the work
    folder and the partial file), instead of killing this process and orphaning its services."""

    def on_term(signum: int, _frame: object) -> None:
        seen.append(signum)
        signal.raise_signal(signal.SIGINT)  # asyncio.run cancels the demo; outside it: KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _has_logs(workdir: Path) -> bool:
    return any(p.is_file() and p.stat().st_size > 0 for p in workdir.glob("*.log"))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def source_tuning(settings: Settings) -> dict[str, str]:
    """The user's :data:`SOURCE_TUNING` settings as variables for the demo's worker."""
    return {f"TRACE_WORKER_{name.upper()}": str(getattr(settings, name)) for name in SOURCE_TUNING}


async def _demo(
    args: argparse.Namespace, settings: Settings, named_redis: str | None, output: Path, workdir: Path
) -> tuple[int, _Summary | None]:
    """Start the services, run the job, stop every service; (exit status, what to print)."""
    stack = DemoStack(workdir)
    prefix = f"tw-demo-{secrets.token_hex(4)}"
    redis_url = named_redis
    try:
        if redis_url is not None:
            if not await _reachable(redis_url):
                named = _safe(redis_url)
                raise UsageError(f"cannot reach the Redis named by --redis-url or the settings: {named}")
            _say(f"redis      {_safe(redis_url)} (named; keys under {prefix}:, removed afterwards)")
        else:
            redis_url = await stack.start_redis()
            _say(f"redis      {redis_url} (private redis-server)")
        flight_url, process_id = await stack.start_devserver(args.process)
        _say(f"devserver  {flight_url} (sample '{args.process}' process {process_id})")
        await stack.start_worker(
            stack.worker_env(redis_url, prefix, flight_url, workdir / "blobs", source_tuning(settings))
        )
        _say("worker     started (python -m worker run)")
        gateway = await stack.start_gateway(redis_url, prefix, flight_url) if args.gateway else None
        if gateway is not None:
            _say(f"gateway    {gateway}")
        code, summary = await _request(args, redis_url, prefix, process_id, output, stack)
        if gateway is not None and code == 0:
            if summary is not None:
                _print_summary(summary)  # now: the services keep running for the page
            print(f"gateway    open {gateway} in a browser; Ctrl-C stops everything", flush=True)
            name = await stack.died()
            _say(f"trace-worker demo: the {name} stopped unexpectedly: {stack.log_tail(name)}")
            return 1, None
        return code, summary
    except StackError as exc:
        _say(f"trace-worker demo: {exc}")
        return 1, None
    except (asyncio.CancelledError, KeyboardInterrupt):
        if stack.procs:
            _say("trace-worker demo: stopping the services")
        raise
    finally:
        try:
            await stack.aclose()
        except BaseException:
            stack.kill_all()
            raise
        if named_redis is not None:
            await _forget(named_redis, prefix)
        # Ctrl-C cancels this task; an await that swallowed that cancellation (one that was itself
        # cancelling a helper task at that moment) must not let the demo go on to its summary.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


@dataclass(frozen=True)
class _Summary:
    """What the demo prints once its services are stopped."""

    path: Path
    status: StatusEvent
    elapsed_s: float


async def _request(  # noqa: PLR0917 - private helper
    args: argparse.Namespace, redis_url: str, prefix: str, process_id: str, output: Path, stack: DemoStack
) -> tuple[int, _Summary | None]:
    started = time.monotonic()
    async with TraceClient(redis_url, prefix) as client:
        job = await client.submit(TraceRequest(process_id=process_id, labels={"requested_by": "demo"}))
        _say(f"job        {job.job_id}")
        display = ProgressLine(enabled=not args.quiet)
        download = asyncio.ensure_future(job.download(output, timeout=args.timeout, on_event=display))
        death = asyncio.ensure_future(stack.died())
        try:
            await asyncio.wait({download, death}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            display.close()
            for fut in (download, death):
                fut.cancel()
            # Wait until the download has stopped (its .part file removed), and let a Ctrl-C that
            # cancelled this task through (never suppress(CancelledError) here: that swallows it).
            await asyncio.gather(download, death, return_exceptions=True)
        if download.cancelled():
            name = death.result()
            _say(f"trace-worker demo: the {name} stopped unexpectedly: {stack.log_tail(name)}")
            return 1, None
        try:
            status = download.result()
        except JobFailed as exc:
            _say(f"trace-worker demo: {exc}")
            return 1, None
        except TimeoutError:
            _say(f"trace-worker demo: no trace after {args.timeout:g} s")
            return 1, None
    path = output.resolve()  # noqa: ASYNC240 - one call after the download
    return 0, _Summary(path, status, time.monotonic() - started)


def _print_summary(summary: _Summary) -> None:
    """The trace's facts (the services are stopped by now: an interrupt here has nothing to stop)."""
    path, status, elapsed = summary.path, summary.status, summary.elapsed_s
    size = status.size or 0
    print(f"trace      {path}")
    print(f"size       {format_size(size)} ({size:,} bytes), sha256 {status.sha256}")
    if status.spans is not None:
        rate = f", {status.spans / elapsed:,.0f} spans/s end to end" if elapsed > 0 else ""
        print(f"spans      {status.spans:,} in {elapsed:.1f} s{rate}")
    _print_inspection(path)
    print(f"open it in the Perfetto UI: https://ui.perfetto.dev -> Open trace file -> {path}")


def _print_inspection(path: Path) -> None:
    """Facts from `trace-worker inspect`, when this build has it."""
    if importlib.util.find_spec("worker.inspect") is None:
        return
    from worker.commands.inspect import progress_printer  # noqa: PLC0415 - optional part of the build
    from worker.inspect import inspect_trace  # noqa: PLC0415 - optional part of the build

    report = inspect_trace(path, progress=progress_printer(path))
    verdict = "no defects" if report.ok else f"DEFECTS {report.defect_counts}"
    facts = f"{report.packets:,} packets, {len(report.tracks)} tracks, {report.slices:,} slices"
    print(f"inspect    {facts}, {verdict}")


async def _reachable(url: str) -> bool:
    try:
        client = TraceClient(url, "probe")
    except ValueError:
        return False
    try:
        async with asyncio.timeout(2):
            await client.ping()
        return True
    except (TimeoutError, Exception):
        return False
    finally:
        await client.aclose()


async def _forget(redis_url: str, prefix: str) -> None:
    """Remove the demo's keys from a shared Redis."""
    with contextlib.suppress(RedisError, OSError):
        async with TraceClient(redis_url, prefix) as client:
            keys = [key async for key in client.redis.scan_iter(match=f"{prefix}:*", count=500)]
            if keys:
                await client.redis.delete(*keys)


def _safe(url: str) -> str:
    return mask_url(url)
