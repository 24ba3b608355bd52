"""`trace-worker` command line. Each subcommand lives in ``worker/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function taking the parsed
arguments and returning an exit status.

Start-up is cheap: only the module of the command being run is imported (``trace-worker --help``
imports none; :data:`COMMANDS` holds their one-line summaries), so no command pays for another's
imports (pyarrow, faststream, redis, ...).

Errors a user can cause (a wrong URL, an unknown process, a bad time) are reported in one line,
without a traceback: command handlers raise :class:`UsageError` or a :class:`TraceWorkerError`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from worker import __version__

__all__ = ["UsageError", "main"]

#: Subcommand modules under worker.commands, in --help order, with the summary --help lists
#: (the same text each module's ``register`` gives; tests/cli/test_startup.py checks).
COMMANDS: dict[str, str] = {
    "inspect": "decode a Perfetto trace and report tracks, slices, logs, counter values and defects",
    "devserver": "run a development Flight SQL server (Micromegas-like) over a synthetic lake",
    "generate": "write one process's Perfetto trace to a file (no Redis)",
    "processes": "list the processes of the Flight SQL service",
    "request": "request a trace from the workers and write it to a file",
    "status": "show a job's latest state",
    "cancel": "cancel a job",
    "jobs": "list recent jobs and their states",
    "run": "run the worker service (consume trace requests from Redis)",
    "gateway": "serve the HTTP API and the web page (processes, trace jobs, downloads)",
    "demo": "run a private Redis, the devserver and a worker, and trace a sample process",
}


class UsageError(Exception):
    """A mistake in how a command was called; printed as one line, exit status 2."""


def build_parser(full: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the commands in ``full`` (default: all) get their own options, the others only
    their name and summary (enough for ``trace-worker --help`` and to pick a command)."""
    parser = argparse.ArgumentParser(
        prog="trace-worker",
        description="Perfetto traces from Micromegas telemetry, on demand.",
        epilog="settings: TRACE_WORKER_* variables or a .env file (docs/CONFIGURATION.md); "
        "`trace-worker COMMAND --help` for a command's options",
    )
    parser.add_argument("--version", action="version", version=f"trace-worker {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        if full is None or name in full:
            importlib.import_module(f"worker.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


#: Exit status when the reader of stdout went away (``| head``): what a process killed by SIGPIPE gets.
EXIT_PIPE = 128 + 13


def _stdout_closed() -> int:
    """The reader of our output is gone (``trace-worker processes | head -2``): stop quietly, as Unix
    tools do, without a traceback nor a second error when Python flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE


def _chosen(argv: Sequence[str]) -> list[str]:
    """The command named on the command line (its first word that is not an option), if any."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return [first] if first in COMMANDS else []


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # Importing the command's module takes a moment: a Ctrl-C then is no programming error.
        parser = build_parser(full=_chosen(argv))
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("trace-worker: interrupted", file=sys.stderr)
        return 130
    try:
        status: int = args.handler(args)
    except UsageError as exc:
        print(f"trace-worker {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trace-worker {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()
    except Exception as exc:
        # Loaded by the command already; imported here so that --help stays light.
        from worker.errors import TraceWorkerError  # noqa: PLC0415
        from worker.settings import SettingsError  # noqa: PLC0415

        if isinstance(exc, SettingsError):
            print(f"trace-worker {args.command}: {exc}", file=sys.stderr)
            return 2
        if not isinstance(exc, TraceWorkerError):
            raise
        print(f"trace-worker {args.command}: {exc.code.value}: {exc}", file=sys.stderr)
        return 1
    return status
