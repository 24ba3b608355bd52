"""``trace-worker devserver``: a development Flight SQL server with a synthetic telemetry lake."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from worker.cli import UsageError
from worker.devserver import PROCESS_KINDS, LakeConfig
from worker.devserver.lake import DEFAULT_PROCESSES
from worker.devserver.main import serve
from worker.devserver.memory import BATCH_ROWS

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "devserver",
        help="run a development Flight SQL server (Micromegas-like) over a synthetic lake",
        description=(
            "Serve Micromegas's tables (processes, streams, blocks) and view_instance('thread_spans' | "
            "'async_events' | 'log_entries', id) over Arrow Flight SQL, from a synthetic lake generated "
            "on demand, deterministic from --seed. Prints its address and the process ids it serves, "
            "then runs until SIGINT/SIGTERM."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="TCP port; 0 picks a free one (default 50051)")
    p.add_argument("--seed", type=int, default=42, help="seed of the synthetic lake (default 42)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiplies every process's span and log counts (default 1.0)",
    )
    p.add_argument(
        "--processes",
        default=",".join(DEFAULT_PROCESSES),
        help=f"comma-separated process kinds to serve, from {sorted(PROCESS_KINDS)} (default %(default)s)",
    )
    p.add_argument(
        "--large-spans",
        type=int,
        default=None,
        help="thread spans of the 'large' process (default 5,000,000 x scale); its async spans become N/20",
    )
    p.add_argument("--large-async-spans", type=int, default=None, help="async spans of the 'large' process")
    p.add_argument(
        "--mode",
        choices=("micromegas", "friendly"),
        default="micromegas",
        help="micromegas: strict like upstream (zero-field FlightInfo schema, prepared statements not "
        "executable, thread_spans needs the range headers); friendly: real schemas, prepared "
        "statements, no range needed (default micromegas)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("TRACE_WORKER_DEVSERVER_TOKEN"),
        help="require 'authorization: Bearer TOKEN' on every call (default: $TRACE_WORKER_DEVSERVER_TOKEN, "
        "else no auth)",
    )
    p.add_argument(
        "--tls-cert", type=Path, default=None, help="PEM certificate: serve grpc+tls (with --tls-key)"
    )
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument(
        "--dictionary-keys",
        choices=("int32", "int16", "plain"),
        default="int32",
        help="string columns of the views: dictionary with int32 keys (Micromegas >= 0.28), int16 keys "
        "(older) or plain utf8 (default int32)",
    )
    p.add_argument(
        "--no-async-hash",
        action="store_true",
        help="omit async_events.hash, as Micromegas before 0.22",
    )
    p.add_argument(
        "--no-process-spans",
        action="store_true",
        help="do not serve the process_spans table function, as a Micromegas without it",
    )
    p.add_argument(
        "--block-rows", type=int, default=65_536, help="rows per generated thread-span block (default 65536)"
    )
    p.add_argument(
        "--in-memory",
        action="store_true",
        help="generate the whole lake once at start (before listening) and serve it from memory: "
        "faster serving, memory grows with the lake (~0.5 GB for the 5.2M-span large process); "
        "default: generate rows on the fly, flat memory",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help=f"with --in-memory: most rows per served record batch (default {BATCH_ROWS}, the on-the-fly "
        "block size; batches are also kept near 8 MiB)",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        config = LakeConfig(
            seed=args.seed,
            scale=args.scale,
            processes=tuple(k.strip() for k in args.processes.split(",") if k.strip()),
            large_spans=args.large_spans,
            large_async_spans=args.large_async_spans,
            block_rows=args.block_rows,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.batch_rows is not None and not args.in_memory:
        # On the fly, batches are the generated blocks (--block-rows): a silently ignored flag misleads.
        raise UsageError("--batch-rows applies only with --in-memory (on the fly, see --block-rows)")
    batch_rows = BATCH_ROWS if args.batch_rows is None else args.batch_rows
    if batch_rows < 1:
        raise UsageError("--batch-rows must be positive")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    return serve(
        config,
        host=args.host,
        port=args.port,
        mode=args.mode,
        token=args.token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        dictionary_keys=args.dictionary_keys,
        async_hash=not args.no_async_hash,
        process_spans=not args.no_process_spans,
        in_memory=args.in_memory,
        batch_rows=batch_rows,
    )
