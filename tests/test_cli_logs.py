"""`--logs` / `--metrics` on `trace-worker generate` (against the devserver) and `trace-worker request`."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.decode_logs import decode_logs
from tests.support.devserver import small_lake, start_devserver
from worker.cli import main
from worker.commands.request import build_request, register
from worker.devserver import DevServer


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with start_devserver(small_lake(seed=2), mode="friendly") as srv:
        yield srv


def test_generate_with_logs_and_metrics_writes_them(server: DevServer, tmp_path: Path) -> None:
    p = server.lake.processes[0]
    out = tmp_path / "trace.pftrace"
    argv = ["generate", "--flightsql", server.url, "--process-id", p.process_id, "-o", str(out), "--quiet"]
    assert main([*argv, "--span-types", "async", "--logs", "--metrics"]) == 0
    got = decode_logs(out.read_bytes())
    assert got.problems == []
    assert len(got.logs) == p.log_entry_count
    assert sum(len(v) for v in got.counters.values()) == p.measure_count
    assert main([*argv, "--span-types", "async"]) == 0
    plain = decode_logs(out.read_bytes())
    assert plain.logs == [] and plain.counters == {}


def test_request_flags_set_the_request_fields() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    pid = "34d7c06d-3163-4111-863e-c5fc09d22d51"
    req = build_request(parser.parse_args(["request", pid, "--logs", "--metrics"]))
    assert (req.logs, req.metrics) == (True, True)
    req = build_request(parser.parse_args(["request", pid]))
    assert (req.logs, req.metrics) == (False, False)
