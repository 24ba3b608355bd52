"""A ``trace-worker gateway`` subprocess on a free loopback port, for API and browser tests.

with run_gateway(env) as gw:       # env: worker_env(...) plus TRACE_WORKER_GATEWAY_* settings
    httpx.get(gw.url + "/livez")
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.worker_process import stop_process

__all__ = ["GatewayProcess", "run_gateway"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)


@contextmanager
def run_gateway(env: dict[str, str], *, timeout: float = 60.0) -> Iterator[GatewayProcess]:
    """Start the gateway with ``env`` on a free port; stopped (SIGTERM, then SIGKILL) on exit.

    Raises:
        RuntimeError: it exited or did not print its URL within ``timeout`` (output in the message).
    """
    env = {
        **env,
        "TRACE_WORKER_GATEWAY_PORT": "0",
        "TRACE_WORKER_GATEWAY_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "gateway"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        url = ""
        while not url:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError("gateway printed no URL in time:\n" + "".join(output)) from None
            if line is None:
                raise RuntimeError("gateway exited before listening:\n" + "".join(output))
            if line.startswith("gateway listening on "):
                url = line.split()[-1]
        yield GatewayProcess(proc, url, output)
    finally:
        stop_process(proc)
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
