"""`trace-worker` command line. Each subcommand lives in ``worker/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the parsed
arguments and returning an exit status.

Errors a user can cause (a wrong URL, an unknown process, a bad time) are reported in one line,
without a traceback: command handlers raise :class:`UsageError` or a :class:`TraceWorkerError`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from worker import __version__
from worker.errors import TraceWorkerError

__all__ = ["UsageError", "main"]

#: Subcommand modules under worker.commands, in --help order.
COMMANDS: tuple[str, ...] = (
    "inspect",
    "devserver",
    "generate",
    "processes",
    "request",
    "status",
    "cancel",
    "jobs",
    "run",
    "demo",
)


class UsageError(Exception):
    """A mistake in how a command was called; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trace-worker",
        description="Perfetto traces from Micromegas telemetry, on demand.",
    )
    parser.add_argument("--version", action="version", version=f"trace-worker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"worker.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except UsageError as exc:
        print(f"trace-worker {args.command}: {exc}", file=sys.stderr)
        return 2
    except TraceWorkerError as exc:
        print(f"trace-worker {args.command}: {exc.code.value}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"trace-worker {args.command}: interrupted", file=sys.stderr)
        return 130
    return status
