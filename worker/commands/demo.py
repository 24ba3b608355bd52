"""`trace-worker demo`: the whole product on one machine, with nothing running beforehand.

    trace-worker demo -o demo.pftrace

Starts a private redis-server (unless a Redis is named with --redis-url or TRACE_WORKER_REDIS_URL;
then its keys go under a private prefix, removed afterwards), the development Flight SQL server with
a small lake and a worker (subprocesses on free loopback ports); requests the trace of a sample
process through the client library, shows progress, writes the file, stops every service and prints
a summary. Ctrl-C (SIGINT), SIGTERM and SIGHUP (terminal closed) stop everything it started, remove
its keys from a named Redis and its work folder, and exit 128 + the signal's number (130, 143, 129); a
second signal while it stops the services kills them at once. A SIGINT or SIGHUP that was ignored when
the demo started (``cmd &`` in a script, ``nohup``) stays ignored. The services' logs are kept only
when something fails.
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
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

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
_T = TypeVar("_T")


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
    stops = _Stops()
    with stops.installed():
        workdir = Path(tempfile.mkdtemp(prefix="trace-worker-demo-"))
        ok = False
        try:
            code, summary = stops.run(_demo(args, settings, redis_url, output, workdir, stops))
            ok = code == 0
            if summary is not None:
                _print_summary(summary)
            return code
        except (KeyboardInterrupt, UsageError):
            ok = True  # everything was stopped; nothing to look at
            if stops.seen:
                first = stops.seen[0]
                _say(f"trace-worker demo: {STOP_WORDS.get(first, 'stopped')}")
                return 128 + first
            raise
        finally:
            if ok or not _has_logs(workdir):
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                _say(f"trace-worker demo: service logs kept in {workdir}")


#: The signals that stop the demo, and what it says when one did.
STOP_WORDS: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hangup (terminal closed)",
}
#: Longest wait to remove the demo's keys from a named Redis when it stops.
FORGET_TIMEOUT_S = 10.0


class _Stops:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP while the demo runs, all handled alike.

    The first one cancels the demo's task: its teardown stops every service (SIGTERM, SIGKILL after
    ``STOP_TIMEOUT_S``), removes its keys from a named Redis (at most ``FORGET_TIMEOUT_S``) and then
    the demo exits ``128 + signal``. A later one while that runs SIGKILLs the services at once
    (:attr:`on_repeat`) but never cancels the teardown, so the keys are still removed. Outside the
    event loop (the summary, the trace's inspection) a signal raises KeyboardInterrupt.

    Python installs its KeyboardInterrupt handler only when SIGINT is not inherited as ignored, and
    asyncio only then cancels the main task on SIGINT: so every signal here gets this handler, not a
    re-raised SIGINT. A SIGINT or SIGHUP inherited as ignored (``cmd &`` in a non-interactive shell,
    ``nohup cmd``) stays ignored, as for other Unix tools; SIGTERM is always handled.
    """

    def __init__(self) -> None:
        #: Signals received, in order.
        self.seen: list[int] = []
        #: Called (in the event loop) on every signal after the first while the demo task runs.
        self.on_repeat: Callable[[], None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """This handler for the stop signals not ignored (SIGTERM always), the previous ones after."""
        previous: dict[int, Any] = {}
        for sig in STOP_WORDS:
            if sig != signal.SIGTERM and signal.getsignal(sig) is signal.SIG_IGN:
                continue
            previous[sig] = signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` as the task the first stop signal cancels; KeyboardInterrupt when one did."""
        with asyncio.Runner() as runner:
            self._loop = runner.get_loop()
            self._task = self._loop.create_task(coro)
            try:
                result: _T = self._loop.run_until_complete(self._task)
                return result
            except asyncio.CancelledError:
                if self.seen:
                    raise KeyboardInterrupt from None
                raise
            finally:
                self._task = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.seen.append(signum)
        task, loop = self._task, self._loop
        if task is None or task.done() or loop is None:
            raise KeyboardInterrupt
        if len(self.seen) == 1:
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake the loop if it waits in select()
        elif self.on_repeat is not None:
            loop.call_soon_threadsafe(self.on_repeat)


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


def _has_logs(workdir: Path) -> bool:
    return any(p.is_file() and p.stat().st_size > 0 for p in workdir.glob("*.log"))


def _say(text: str) -> None:
    # After SIGHUP the terminal may be gone (EIO): the teardown goes on regardless.
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


def source_tuning(settings: Settings) -> dict[str, str]:
    """The user's :data:`SOURCE_TUNING` settings as variables for the demo's worker."""
    return {f"TRACE_WORKER_{name.upper()}": str(getattr(settings, name)) for name in SOURCE_TUNING}


async def _demo(  # noqa: PLR0917 - private helper
    args: argparse.Namespace,
    settings: Settings,
    named_redis: str | None,
    output: Path,
    workdir: Path,
    stops: _Stops,
) -> tuple[int, _Summary | None]:
    """Start the services, run the job, stop every service; (exit status, what to print)."""
    stack = DemoStack(workdir)
    stops.on_repeat = stack.kill_all  # a second signal while stopping: no more waiting for them
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
        except asyncio.CancelledError:
            # Stopped while stopping the services (a signal after the job ended): kill them now.
            stack.kill_all()
            await stack.aclose()
            raise
        finally:
            # Whatever ended the demo: its keys never outlive it in the user's Redis.
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
            with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) must not stop the teardown
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
    """Remove the demo's keys from a shared Redis (at most ``FORGET_TIMEOUT_S``; errors ignored)."""
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        async with asyncio.timeout(FORGET_TIMEOUT_S), TraceClient(redis_url, prefix) as client:
            keys = [key async for key in client.redis.scan_iter(match=f"{prefix}:*", count=500)]
            if keys:
                await client.redis.delete(*keys)


def _safe(url: str) -> str:
    return mask_url(url)
