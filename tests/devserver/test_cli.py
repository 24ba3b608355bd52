"""``trace-worker devserver`` as a process: flags, startup output, clean stop."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pyarrow.flight as fl
import pytest

from tests.support.devserver import _BOOT, ROOT, run_devserver_subprocess
from worker.commands import devserver as command
from worker.devserver import Lake, LakeConfig
from worker.devserver import flightsql_messages as msg


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trace-worker")
    command.register(parser.add_subparsers(dest="command"))
    return parser


def test_help_documents_every_flag() -> None:
    group = _parser()._subparsers
    assert group is not None
    choices = group._group_actions[0].choices
    assert isinstance(choices, dict)
    sub: argparse.ArgumentParser = choices["devserver"]
    text = sub.format_help()
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


def test_prints_address_and_processes_then_stops_cleanly_on_sigterm() -> None:
    with run_devserver_subprocess(
        ["--processes", "small,wide", "--seed", "9", "--mode", "friendly"]
    ) as server:
        assert server.url.startswith("grpc://127.0.0.1:")
        lake = Lake(LakeConfig(seed=9, processes=("small", "wide")))
        with fl.FlightClient(server.url) as client:
            ticket = fl.Ticket(
                msg.pack(msg.TicketStatementQuery(statement_handle=b"SELECT process_id FROM processes"))
            )
            served = client.do_get(ticket).read_all().column("process_id").to_pylist()
        assert served == [p.process_id for p in lake.processes]
        assert server.terminate() == 0
        server.close()  # joins the output reader
        printed = "".join(server.output)
        for p in lake.processes:
            assert p.process_id in printed and f"thread_spans={p.thread_span_count}" in printed
        assert "devserver stopped" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "tiny"], "unknown process kinds"),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
        (["--batch-rows", "1000"], "--batch-rows applies only with --in-memory"),
        (["--in-memory", "--batch-rows", "0"], "--batch-rows must be positive"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BOOT.replace("sys.exit(a.handler(a))", _HANDLE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr


# The real CLI prints UsageError in one line with status 2; the boot snippet does the same.
_HANDLE = (
    "from worker.cli import UsageError\n"
    "try:\n"
    "    sys.exit(a.handler(a))\n"
    "except UsageError as exc:\n"
    "    print(exc, file=sys.stderr); sys.exit(2)\n"
)
