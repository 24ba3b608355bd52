"""`trace-worker demo`: the whole product on one machine, with nothing running beforehand.

    trace-worker demo -o demo.pftrace

Uses the Redis of the settings when it answers (under a private key prefix, removed afterwards),
otherwise starts a private redis-server; starts the development Flight SQL server with a small lake
and a worker (subprocesses on free loopback ports); requests the trace of a sample process through
the client library, shows progress, writes the file, prints a summary; and stops everything it
started, also on Ctrl-C. Logs of the services are kept only when something fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from contracts.client import JobFailed, TraceClient
from contracts.request import TraceRequest
from worker.cli import UsageError
from worker.commands._client_cli import ProgressLine, format_size
from worker.commands._demo_stack import DemoStack, StackError
from worker.settings import Settings

__all__ = ["register"]

PROCESS_KINDS = ("small", "typical", "large", "wide")


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run Redis (if needed), the devserver and a worker, and trace a sample process",
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
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S", help="give up after S seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker demo``."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise UsageError(f"invalid settings: {exc.errors()[0]['msg']}") from exc
    output = Path(args.output)
    if output.is_dir() or not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: not a file in an existing directory")
    workdir = Path(tempfile.mkdtemp(prefix="trace-worker-demo-"))
    ok = False
    try:
        code = asyncio.run(_demo(args, settings, output, workdir))
        ok = code == 0
        return code
    except KeyboardInterrupt:
        ok = True  # everything was stopped; nothing to look at
        raise
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"trace-worker demo: service logs kept in {workdir}", file=sys.stderr)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _demo(args: argparse.Namespace, settings: Settings, output: Path, workdir: Path) -> int:
    stack = DemoStack(workdir)
    prefix = f"tw-demo-{secrets.token_hex(4)}"
    redis_url: str | None = None
    shared_redis = False
    try:
        if await _reachable(settings.redis_url):
            redis_url, shared_redis = settings.redis_url, True
            _say(f"redis      {_safe(redis_url)} (from settings; keys under {prefix}:)")
        else:
            redis_url = await stack.start_redis()
            _say(f"redis      {redis_url} (private redis-server; nothing at {_safe(settings.redis_url)})")
        flight_url, process_id = await stack.start_devserver(args.process)
        _say(f"devserver  {flight_url} (sample '{args.process}' process {process_id})")
        await stack.start_worker(redis_url, prefix, flight_url, workdir / "blobs")
        _say("worker     started (python -m worker run)")
        return await _request(args, redis_url, prefix, process_id, output, stack)
    except StackError as exc:
        _say(f"trace-worker demo: {exc}")
        return 1
    except BaseException:
        _say("trace-worker demo: stopping the services")
        raise
    finally:
        try:
            await stack.aclose()
        except BaseException:
            stack.kill_all()
            raise
        if shared_redis and redis_url is not None:
            await _forget(redis_url, prefix)


async def _request(  # noqa: PLR0917 - private helper
    args: argparse.Namespace, redis_url: str, prefix: str, process_id: str, output: Path, stack: DemoStack
) -> int:
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
                if not fut.done():
                    fut.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await fut
        if not download.done() or download.cancelled():
            name = death.result()
            _say(f"trace-worker demo: the {name} stopped unexpectedly: {stack.log_tail(name)}")
            return 1
        try:
            status = download.result()
        except JobFailed as exc:
            _say(f"trace-worker demo: {exc}")
            return 1
        except TimeoutError:
            _say(f"trace-worker demo: no trace after {args.timeout:g} s")
            return 1
    elapsed = time.monotonic() - started
    path = output.resolve()  # noqa: ASYNC240 - one call after the download
    size = status.size or 0
    print(f"trace      {path}")
    print(f"size       {format_size(size)} ({size:,} bytes), sha256 {status.sha256}")
    if status.spans is not None:
        rate = f", {status.spans / elapsed:,.0f} spans/s end to end" if elapsed > 0 else ""
        print(f"spans      {status.spans:,} in {elapsed:.1f} s{rate}")
    await asyncio.to_thread(_print_inspection, path)
    print(f"open it in the Perfetto UI: https://ui.perfetto.dev -> Open trace file -> {path}")
    return 0


def _print_inspection(path: Path) -> None:
    """Facts from `trace-worker inspect`, when this build has it."""
    if importlib.util.find_spec("worker.inspect") is None:
        return
    from worker.inspect import inspect_trace  # noqa: PLC0415 - optional part of the build

    report = inspect_trace(path)
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
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
