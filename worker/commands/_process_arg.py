"""The process to trace, as the commands that take one accept it: ``PROCESS_ID`` or ``--process-id``
(both forms in `generate` and `request`, so neither has to be remembered)."""

from __future__ import annotations

import argparse

from worker.cli import UsageError

__all__ = ["add_process_id_args", "process_id_of"]


def add_process_id_args(parser: argparse.ArgumentParser) -> None:
    """An optional ``PROCESS_ID`` positional and ``--process-id ID``; one of them is required."""
    parser.add_argument(
        "process_id",
        nargs="?",
        metavar="PROCESS_ID",
        help="the process's UUID (see `trace-worker processes`); or give it as --process-id",
    )
    parser.add_argument("--process-id", dest="process_id_option", metavar="ID", help="the same as PROCESS_ID")


def process_id_of(args: argparse.Namespace) -> str:
    """The process id from either form.

    Raises:
        UsageError: neither form, or two different ids.
    """
    positional, option = args.process_id, args.process_id_option
    if positional and option and positional != option:
        raise UsageError(f"two process ids: {positional} and --process-id {option}")
    chosen = positional or option
    if not chosen:
        raise UsageError("which process? give PROCESS_ID or --process-id (see `trace-worker processes`)")
    return str(chosen)
