"""`trace-worker generate` and `trace-worker processes`: argument handling, output, errors."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.decode import decode
from tests.support.devserver import small_lake, start_devserver
from worker.cli import UsageError, main
from worker.commands.generate import ProgressDisplay, parse_time
from worker.commands.processes import format_table
from worker.devserver import DevServer, Lake
from worker.model import ProcessInfo
from worker.pipeline import Progress
from worker.settings import get_settings


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-11-01T00:00:00Z", 1_793_491_200_000_000_000),
        ("2026-11-01T01:00:00+01:00", 1_793_491_200_000_000_000),
        ("2026-11-01T00:00:00.5Z", 1_793_491_200_500_000_000),
        ("2026-11-01T00:00:00.123456789Z", 1_793_491_200_123_456_789),
        ("1793491200000000001", 1_793_491_200_000_000_001),
    ],
)
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-01T00:00:00",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "",
        "-5",
        "1969-12-31T23:59:59Z",
        "253402300800000000000",
    ],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time(text)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(phase: str, spans: int) -> Progress:
    return Progress(phase=phase, spans=spans, bytes=spans * 30, threads_done=1, threads_total=4, percent=25.0)


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    out = _Tty()
    display = ProgressDisplay(out, interval_s=0.0)
    display(_progress("thread_spans", 10))
    display(_progress("thread_spans", 20))
    display(_progress("done", 30))
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 3
    assert "spans 30" in text and "threads 1/4" in text


def test_progress_on_a_pipe_prints_periodic_lines() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, interval_s=3600.0)
    display(_progress("start", 0))
    display(_progress("thread_spans", 10))  # a new phase: shown
    display(_progress("thread_spans", 20))  # same phase within the interval: skipped
    display(_progress("done", 30))  # the final line always shows
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "thread_spans", "done"]
    assert "spans 20" not in out.getvalue()
    assert "\r" not in out.getvalue()


def test_progress_on_a_pipe_prints_every_phase() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, interval_s=3600.0)
    for phase in ("start", "thread_spans", "thread_spans", "async_spans", "finishing", "done"):
        display(_progress(phase, 10))
    assert [line.split()[0] for line in out.getvalue().splitlines()] == [
        "start",
        "thread_spans",
        "async_spans",
        "finishing",
        "done",
    ]


def test_process_table() -> None:
    table = format_table(
        [
            ProcessInfo("34d7c06d-3163-4111-863e-c5fc09d22d51", "/bin/x", username="al", start_time_ns=0),
            ProcessInfo("44d7c06d-3163-4111-863e-c5fc09d22d51", "/usr/bin/longer-name", last_time_ns=1_500),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["PROCESS_ID", "EXE", "USER", "COMPUTER", "START", "LAST"]
    assert "1970-01-01T00:00:00.000000Z" in lines[1]
    assert lines[2].endswith("1970-01-01T00:00:00.000001Z")
    assert lines[1].index("/bin/x") == lines[2].index("/usr/bin/longer-name")


@pytest.fixture(scope="module")
def lake() -> Lake:
    return small_lake(seed=5)


@pytest.fixture(scope="module")
def server(lake: Lake) -> Iterator[DevServer]:
    with start_devserver(lake, token="tok") as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRACE_WORKER_FLIGHTSQL_TOKEN", "tok")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_generate_writes_a_decodable_trace(
    server: DevServer, lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = lake.processes[0]
    out = tmp_path / "trace.pftrace"
    status = main(["generate", "--flightsql", server.url, "--process-id", p.process_id, "-o", str(out)])
    assert status == 0
    decoded = decode(out.read_bytes())
    assert decoded.problems == []
    thread_tracks = {u for u, d in decoded.descriptors.items() if d.HasField("thread")}
    assert sum(1 for s in decoded.slices if s.track in thread_tracks) == p.thread_span_count
    assert any(s.track not in thread_tracks for s in decoded.slices)  # async spans too
    err = capsys.readouterr().err
    assert "done" in err and f"threads {p.thread_count}/{p.thread_count}" in err
    assert f"wrote {out}" in err
    assert [x.name for x in tmp_path.iterdir()] == ["trace.pftrace"]


def test_generate_range_and_span_types(server: DevServer, lake: Lake, tmp_path: Path) -> None:
    p = lake.processes[0]
    out = tmp_path / "t.pb"
    mid = (p.begin_ns + p.end_ns) // 2
    argv = ["generate", "--flightsql", server.url, "--process-id", p.process_id.upper(), "-o", str(out)]
    argv += ["--begin", str(p.begin_ns), "--end", str(mid), "--span-types", "thread", "--quiet"]
    assert main(argv) == 0
    decoded = decode(out.read_bytes())
    assert decoded.slices and all(s.begin <= mid for s in decoded.slices)
    assert all(d.HasField("thread") for d in decoded.descriptors.values() if d.HasField("parent_uuid"))


def test_failed_generation_leaves_no_file(
    server: DevServer, lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = lake.processes[0]
    out = tmp_path / "trace.pftrace"
    # A range after the process's data: the header is written, then empty_range.
    argv = ["generate", "--flightsql", server.url, "--process-id", p.process_id, "-o", str(out)]
    argv += ["--begin", str(p.end_ns + 10**12), "--end", str(p.end_ns + 2 * 10**12)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "trace-worker generate: empty_range:" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        (["--process-id", "x' OR 1=1 --"], 1, "invalid_request"),
        (["--process-id", "00000000-0000-4000-8000-000000000000"], 1, "process_not_found"),
        (["--process-id", "00000000-0000-4000-8000-000000000000", "--begin", "noon"], 2, "not an RFC 3339"),
        (["--process-id", "00000000-0000-4000-8000-000000000000", "--tls-ca", "/nonexistent"], 2, "--tls-ca"),
    ],
)
def test_generate_errors_are_one_line(
    server: DevServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    extra: list[str],
    status: int,
    message: str,
) -> None:
    out = tmp_path / "trace.pftrace"
    assert main(["generate", "--flightsql", server.url, "-o", str(out), "--quiet", *extra]) == status
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        # Both failed only when a query ran, and over pyarrow.flight as retryable source faults.
        ("--tls-ca", "{not_a_cert}", "the Flight SQL CA is not a PEM certificate"),
        ("--token", "t\u00f8ken", "the Flight SQL token must be printable ASCII"),
        ("--token", "line\nbreak", "the Flight SQL token must be printable ASCII"),
    ],
)
def test_generate_refuses_a_bad_ca_or_token_before_any_query(
    server: DevServer,
    lake: Lake,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    flag: str,
    value: str,
    message: str,
) -> None:
    not_a_cert = tmp_path / "ca.pem"
    not_a_cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 DER\n-----END CERTIFICATE-----\n")
    url = server.url.replace("grpc://", "grpc+tls://") if flag == "--tls-ca" else server.url
    out = tmp_path / "trace.pftrace"
    argv = ["generate", "--flightsql", url, "--process-id", lake.processes[0].process_id, "-o", str(out)]
    assert main([*argv, flag, value.format(not_a_cert=not_a_cert), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_generate_refused_token(
    server: DevServer, lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--flightsql", server.url, "--process-id", lake.processes[0].process_id]
    assert main([*argv, "--token", "nope", "-o", str(tmp_path / "t"), "--quiet"]) == 1
    assert "unauthenticated" in capsys.readouterr().err


def test_processes_lists_the_lake(server: DevServer, lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["processes", "--flightsql", server.url, "--limit", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PROCESS_ID")
    assert {line.split()[0] for line in lines[1:]} == {p.process_id for p in lake.processes}


def test_processes_json_for_scripts(
    server: DevServer, lake: Lake, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["processes", "--flightsql", server.url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["process_id"] for r in rows} == {p.process_id for p in lake.processes}
    for row in rows:
        assert {"exe", "username", "computer", "start_time_ns", "last_time", "properties"} <= set(row)
        assert row["last_time"] is None or row["last_time"].endswith("Z")


def test_processes_server_down(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["processes", "--flightsql", f"grpc://127.0.0.1:{port}"]) == 1
    assert "source_unavailable" in capsys.readouterr().err
