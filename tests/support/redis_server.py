"""A private redis-server on a free loopback port, which tests can stop and restart.

Uses the redis-server on PATH (or TRACE_WORKER_TEST_REDIS_SERVER). Never touches a Redis the
machine happens to run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """Start with :meth:`start`; :attr:`url` stays the same across :meth:`stop` / :meth:`start`."""

    def __init__(
        self, *, persistence: bool = False, port: int | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        binary = os.environ.get("TRACE_WORKER_TEST_REDIS_SERVER") or shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH; run scripts/dev setup")
        self.binary = binary
        self.port = port or free_port()
        self.persistence = persistence
        #: More redis-server arguments (e.g. ``--cluster-enabled yes``), after ours.
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="tw-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 60.0) -> RedisServer:
        """Start and wait until it answers PING (generous: the machine may be busy).

        Raises:
            RuntimeError: it exited or did not answer in time (then it is stopped, nothing leaks).
        """
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.persistence else "no",
            "--appendfsync", "always",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    log = (self.dir / "redis.log").read_text(errors="replace")
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log[-2000:]}")
                if self._ping():
                    return self
                time.sleep(0.02)  # polling a readiness condition, not synchronising a test
            raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")
        except BaseException:
            self.stop()
            raise

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop at once (SIGKILL): what a crash looks like to clients. AOF data survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()  # SIGKILL cannot be ignored
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
