"""`trace-worker gateway`: the HTTP API and web page over trace jobs (docs/GATEWAY.md).

Reads Redis, Flight SQL and the key prefix from the same ``TRACE_WORKER_*`` settings as the worker,
plus ``TRACE_WORKER_GATEWAY_*`` (address, token, CORS origins, limits). Prints
``gateway listening on http://HOST:PORT`` once the port is bound, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from worker.cli import UsageError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="serve the HTTP API and the web page (processes, trace jobs, downloads)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--host", help="address to bind (TRACE_WORKER_GATEWAY_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port (TRACE_WORKER_GATEWAY_PORT, default 8000; 0: any free)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``trace-worker gateway``."""
    import uvicorn  # noqa: PLC0415 - imported when run, so --help stays light

    from worker.commands._flightsql_args import check_source_settings  # noqa: PLC0415
    from worker.gateway import create_app  # noqa: PLC0415
    from worker.settings import load_settings  # noqa: PLC0415

    overrides = {"gateway_host": args.host, "gateway_port": args.port}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    check_source_settings(settings)  # a bad CA or token: one line, not a traceback from the lifespan

    sock = _bind(settings.gateway_host, settings.gateway_port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"gateway listening on http://{shown}:{port}", flush=True)
    config = uvicorn.Config(
        create_app(settings),
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
        loop=settings.event_loop,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
