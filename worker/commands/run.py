"""``trace-worker run``: the worker service (settings from TRACE_WORKER_* variables; flags override).

Consumes trace requests from ``<prefix>:requests`` until SIGTERM or SIGINT, then drains: running
jobs get ``drain_timeout_s`` to finish, the rest are released for another worker to reclaim.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.service.logs import configure_logging
from worker.settings import Settings, load_settings
from worker.sinks.blob import blob_store_from_settings

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the worker service (consume trace requests from Redis)",
        description=__doc__,
    )
    parser.add_argument("--concurrency", type=int, help="jobs at once (TRACE_WORKER_WORKER_CONCURRENCY)")
    parser.add_argument("--consumer", help="consumer name in the group (default <hostname>-<pid>)")
    parser.add_argument("--http-host", help="address of /livez /readyz /metrics (empty: no HTTP)")
    parser.add_argument("--http-port", type=int, help="port of the HTTP endpoints (0: any free port)")
    parser.add_argument("--log-format", choices=("text", "json"), help="log lines as text or JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    overrides = {
        "worker_concurrency": args.concurrency,
        "worker_consumer": args.consumer,
        "http_host": args.http_host,
        "http_port": args.http_port,
        "log_format": args.log_format,
    }
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    return asyncio.run(serve(settings))


async def serve(settings: Settings) -> int:
    """Run the service until SIGTERM/SIGINT (exit status 0) or a fatal error (1), then stop gracefully."""
    configure_logging(settings.log_format, settings.log_level)
    store = blob_store_from_settings(settings)
    service = Service(settings, generator=PipelineGenerator(settings), store=store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(service.rt.fatal.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, failed):
            task.cancel()
        return 1 if service.rt.fatal.is_set() else 0
    finally:
        await service.stop()
