"""`trace-worker run`: the worker service (settings from TRACE_WORKER_* variables; flags override).

Consumes trace requests from <prefix>:requests until SIGTERM or SIGINT, then drains: running jobs
get TRACE_WORKER_DRAIN_TIMEOUT_S to finish, the rest are released for another worker to reclaim.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import uvloop

from worker.commands._flightsql_args import check_source_settings
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.service.logs import configure_logging
from worker.settings import Settings, load_settings
from worker.sinks.blob import blob_store_from_settings

__all__ = ["register"]

SETTINGS_EPILOG = """\
connections (environment or .env; every setting: docs/CONFIGURATION.md):
  TRACE_WORKER_REDIS_URL        Redis of the requests and jobs (default redis://127.0.0.1:6379/0)
  TRACE_WORKER_REDIS_CLUSTER    true: that URL names one node of a Redis Cluster (default false)
  TRACE_WORKER_KEY_PREFIX       prefix of every key and stream (default traces)
  TRACE_WORKER_FLIGHTSQL_URL    Flight SQL service, Micromegas (default grpc://127.0.0.1:50051)
  TRACE_WORKER_FLIGHTSQL_TOKEN  its bearer token (TLS: TRACE_WORKER_FLIGHTSQL_TLS_CA)
  TRACE_WORKER_BLOB_URL         where traces go: file:///dir or s3://bucket/prefix (default ./traces)
  TRACE_WORKER_BLOB_S3_*        S3 endpoint, region and credentials
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the worker service (consume trace requests from Redis)",
        description=__doc__,
        epilog=SETTINGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs at once (default: TRACE_WORKER_WORKER_CONCURRENCY or 4)"
    )
    parser.add_argument(
        "--consumer",
        help="consumer name in the group (default: TRACE_WORKER_WORKER_CONSUMER or <hostname>-<pid>)",
    )
    parser.add_argument(
        "--http-host",
        help="address of /livez /readyz /metrics; empty: no HTTP "
        "(default: TRACE_WORKER_HTTP_HOST or 127.0.0.1)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        help="port of the HTTP endpoints; 0: any free port (default: TRACE_WORKER_HTTP_PORT or 8080)",
    )
    parser.add_argument(
        "--redis-cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the Redis URL names one node of a Redis Cluster (default: TRACE_WORKER_REDIS_CLUSTER or no)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="log lines as text or JSON (default: TRACE_WORKER_LOG_FORMAT or text)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:

    overrides = {
        "worker_concurrency": args.concurrency,
        "worker_consumer": args.consumer,
        "http_host": args.http_host,
        "http_port": args.http_port,
        "log_format": args.log_format,
        "redis_cluster": args.redis_cluster,
    }
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    check_source_settings(settings)  # a bad CA or token: exit status 2 like other bad settings
    # uvloop: libuv runs the loop itself and the sockets (Redis replies, chunk writes) in C; tasks and
    # futures stay asyncio's. Interleaved small-job runs: ~6% less worker CPU per job (docs/PERFORMANCE.md,
    # "The event loop"). TRACE_WORKER_EVENT_LOOP=asyncio keeps Python's own loop.
    runner = uvloop.run if settings.event_loop == "uvloop" else asyncio.run
    status: int = runner(serve(settings))
    return status


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
