"""The processes `trace-worker demo` runs: a private redis-server (when needed), the devserver and a
worker, each a subprocess on a free loopback port, all stopped by :meth:`DemoStack.aclose`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
from pathlib import Path

import worker
from worker.cli import UsageError

__all__ = ["SOURCE_TUNING", "DemoStack", "StackError", "free_port"]

#: Source settings the demo's worker takes from the user's settings: how to read, not where (the
#: URL, token and TLS settings are the demo's own devserver's).
SOURCE_TUNING = (
    "flightsql_preserve_dictionary",
    "flightsql_concurrency",
    "flightsql_batch_timeout_s",
    "flightsql_max_threads",
    "flightsql_direct_tickets",
    "flightsql_process_spans_max_objects",
)

_UUID_LINE = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\s")
_PROJECT_ROOT = Path(worker.__file__).resolve().parent.parent
#: How long one service may take to come up, and to stop after SIGTERM.
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


class StackError(Exception):
    """A demo service failed to start or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DemoStack:
    """Starts services into ``workdir`` (logs there) and stops every one it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self._drains: list[asyncio.Task[None]] = []

    def _child_env(self, extra: dict[str, str]) -> dict[str, str]:
        # Only the settings we choose: a TRACE_WORKER_BLOB_URL=s3://... of the user must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_WORKER_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        env.update(extra)
        return env

    async def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115, ASYNC230 - child writes to it
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=self.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        self.procs.append((name, proc))
        return proc

    async def _wait_for_line(self, name: str, proc: asyncio.subprocess.Process, pattern: str) -> str:
        """Read the child's stdout until a line contains ``pattern``; the rest goes to its log."""
        assert proc.stdout is not None
        log = self.workdir / f"{name}.log"
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise StackError(f"{name} exited during startup: {self.log_tail(name)}")
                    with open(log, "ab") as out:  # noqa: ASYNC230 - a few short lines at startup
                        out.write(line)
                    text = line.decode(errors="replace")
                    if pattern in text:
                        return text
        except TimeoutError:
            raise StackError(
                f"{name} did not start within {START_TIMEOUT_S:g} s: {self.log_tail(name)}"
            ) from None

    def log_tail(self, name: str, lines: int = 5) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace").strip()
        except OSError:
            return "(no log)"
        return " | ".join(text.splitlines()[-lines:]) or "(empty log)"

    async def start_redis(self) -> str:
        """A private redis-server on a free port; its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise UsageError(
                "no Redis reachable at the settings URL and no redis-server on PATH; install one "
                "(Debian/Ubuntu: sudo apt-get install redis-server, or scripts/dev setup) or set "
                "TRACE_WORKER_REDIS_URL"
            )
        port = free_port()
        proc = await self._spawn(
            "redis", binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--protected-mode", "no", "--logfile", "",
        )  # fmt: skip
        await self._wait_for_line("redis", proc, "Ready to accept connections")
        self._drain("redis", proc)
        return f"redis://127.0.0.1:{port}/0"

    async def start_devserver(self, process_kind: str, seed: int = 42) -> tuple[str, str]:
        """The devserver serving one process of ``process_kind``; (flight URL, process id)."""
        proc = await self._spawn(
            "devserver", sys.executable, "-m", "worker", "devserver", "--port", str(free_port()),
            "--processes", process_kind, "--seed", str(seed),
            env=self._child_env({}),
        )  # fmt: skip
        first = await self._wait_for_line("devserver", proc, "listening on ")
        url = first.split("listening on ", 1)[1].split()[0]
        line = await self._wait_for_uuid_line("devserver", proc)
        self._drain("devserver", proc)
        return url, line

    async def _wait_for_uuid_line(self, name: str, proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                raw = await proc.stdout.readline()
                if not raw:
                    raise StackError(f"{name} listed no process: {self.log_tail(name)}")
                match = _UUID_LINE.match(raw.decode(errors="replace"))
                if match:
                    return match.group(1)

    def worker_env(
        self, redis_url: str, prefix: str, flight_url: str, blob_dir: Path, tuning: dict[str, str]
    ) -> dict[str, str]:
        """The demo worker's environment: the demo's own services, plus ``tuning`` (the user's
        source settings that do not say where the service is, see :data:`SOURCE_TUNING`)."""
        return self._child_env(
            {
                **tuning,
                "TRACE_WORKER_REDIS_URL": redis_url,
                "TRACE_WORKER_KEY_PREFIX": prefix,
                "TRACE_WORKER_FLIGHTSQL_URL": flight_url,
                "TRACE_WORKER_BLOB_URL": blob_dir.as_uri(),
                "TRACE_WORKER_HTTP_PORT": "0",
                # Stopping the demo must not wait for its job: release it at once.
                "TRACE_WORKER_DRAIN_TIMEOUT_S": "0",
            }
        )

    async def start_worker(self, env: dict[str, str]) -> None:
        """``python -m worker run`` with ``env`` (from :meth:`worker_env`)."""
        proc = await self._spawn("worker", sys.executable, "-m", "worker", "run", env=env)
        self._drain("worker", proc)

    async def start_gateway(self, redis_url: str, prefix: str, flight_url: str) -> str:
        """``trace-worker gateway`` on a free loopback port, with the worker's settings; its URL."""
        env = self._child_env(
            {
                "TRACE_WORKER_REDIS_URL": redis_url,
                "TRACE_WORKER_KEY_PREFIX": prefix,
                "TRACE_WORKER_FLIGHTSQL_URL": flight_url,
                "TRACE_WORKER_GATEWAY_HOST": "127.0.0.1",
                "TRACE_WORKER_GATEWAY_PORT": str(free_port()),
            }
        )
        proc = await self._spawn("gateway", sys.executable, "-m", "worker", "gateway", env=env)
        line = await self._wait_for_line("gateway", proc, "gateway listening on ")
        self._drain("gateway", proc)
        return line.split("gateway listening on ", 1)[1].strip()

    def _drain(self, name: str, proc: asyncio.subprocess.Process) -> None:
        """Keep reading the child's stdout into its log, so a chatty child never blocks on a full pipe."""

        async def copy() -> None:
            assert proc.stdout is not None
            with open(self.workdir / f"{name}.log", "ab") as out:  # noqa: ASYNC230 - small log lines
                while line := await proc.stdout.readline():
                    out.write(line)

        task = asyncio.get_running_loop().create_task(copy())
        self._drains.append(task)

    async def died(self) -> str:
        """Wait until any started service exits; its name."""
        waits = {asyncio.ensure_future(proc.wait()): name for name, proc in self.procs}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for fut in waits:
                fut.cancel()

    async def aclose(self) -> None:
        """SIGTERM every service at once, wait for all of them together at most ``STOP_TIMEOUT_S``,
        SIGKILL what has not stopped by then. Bounded, so an interrupted demo ends within seconds."""
        live = [proc for _name, proc in self.procs if proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(proc.wait()) for _name, proc in self.procs]
        if waits:
            await asyncio.wait(waits, timeout=STOP_TIMEOUT_S)
        self.kill_all()
        for fut in waits:
            await fut
        # The drains end with their child's stdout; a cancellation of this task still gets through.
        await asyncio.gather(*self._drains, return_exceptions=True)

    def kill_all(self) -> None:
        """Last resort when the event loop is going away (a second Ctrl-C)."""
        for _name, proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
