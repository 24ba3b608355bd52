"""Every command's --help: plain text (no reST markup), every argument explained, every default
said, the settings `run` needs named; `generate` and `request` take the process id both ways and
the same times; docs/DEVSERVER.md agrees with the devserver's --help."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.cli import COMMANDS, UsageError, build_parser
from worker.commands._process_arg import process_id_of
from worker.commands.request import build_request

ROOT = Path(__file__).resolve().parents[2]
PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(full=[name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[name]
    return chosen


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_is_plain_and_explains_every_argument(name: str) -> None:
    parser = command_parser(name)
    text = parser.format_help()
    assert not re.search(r"``|:class:|:func:|:data:", text), text
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help"
        has_default = action.default not in (None, False, argparse.SUPPRESS, [])
        if action.option_strings and has_default:
            assert "default" in action.help, f"{name} {action.option_strings}: default not said"


def test_run_help_names_the_connection_settings() -> None:
    text = command_parser("run").format_help()
    assert "docs/CONFIGURATION.md" in text
    for name in ("REDIS_URL", "KEY_PREFIX", "FLIGHTSQL_URL", "FLIGHTSQL_TOKEN", "BLOB_URL"):
        assert f"TRACE_WORKER_{name}" in text
    assert "default: wait until the job ends" in " ".join(command_parser("request").format_help().split())


@pytest.mark.parametrize("name", ["generate", "request"])
def test_the_process_id_is_accepted_both_ways(name: str) -> None:
    parser = build_parser(full=[name])
    out = ["-o", "t.pftrace"]  # generate requires it
    both = [[name, PID, *out], [name, "--process-id", PID, *out]]
    assert {process_id_of(parser.parse_args(argv)) for argv in both} == {PID}
    with pytest.raises(UsageError, match="two process ids"):
        process_id_of(parser.parse_args([name, PID, "--process-id", "other", *out]))
    with pytest.raises(UsageError, match="which process"):
        process_id_of(parser.parse_args([name, *out]))


def test_request_takes_epoch_nanoseconds_as_generate_does() -> None:
    begin_ns = 1_793_491_200_123_456_789
    args = build_parser(full=["request"]).parse_args(
        ["request", PID, "--begin", str(begin_ns), "--end", "2026-11-01T01:00:00Z"]
    )
    request = build_request(args)
    assert request.begin == datetime(2026, 11, 1, 0, 0, 0, 123456, tzinfo=UTC)  # microseconds on the wire
    assert "epoch ns" in command_parser("request").format_help()


def test_request_help_says_what_to_set_to_read_a_local_blob() -> None:
    text = " ".join(command_parser("request").format_help().split())
    assert "chunk_ttl_s" in text and "TRACE_WORKER_BLOB_URL=file://<that folder>" in text


def test_request_compress_goes_into_the_request_only_when_given() -> None:
    parser = build_parser(full=["request"])
    gz = build_request(parser.parse_args(["request", PID, "--compress", "gzip", "--blob-only"]))
    assert gz.compress == "gzip" and '"compress":"gzip"' in gz.to_json()
    plain = build_request(parser.parse_args(["request", PID]))
    assert plain.compress is None and "compress" not in plain.to_json()
    assert gz.effective_job_id() != plain.effective_job_id()


def test_devserver_doc_states_the_default_processes_of_its_help() -> None:
    default = command_parser("devserver").get_default("processes")
    doc = (ROOT / "docs" / "DEVSERVER.md").read_text().splitlines()
    row = next(line for line in doc if "`--processes`" in line)
    assert f"default `{default}`" in row
