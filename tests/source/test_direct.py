"""Direct-ticket queries go over pyarrow.flight, not ADBC: the same trace with no ADBC read; a read
stalled mid-stream is cancelled (its blocked thread returns); a transport failure drops the client,
so the source reconnects at once when the server is back; pyarrow.flight's errors translate as
ADBC's do."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from tests.support.chaos import ChaosProxy
from tests.support.devserver import ROOT, start_devserver
from tests.support.source import open_source, whole_trace
from worker.devserver import DevServer, Lake, LakeConfig
from worker.errors import (
    BadSourceData,
    QueryRejected,
    SourceBroken,
    SourceUnavailable,
    TraceWorkerError,
    Unauthenticated,
)
from worker.model import TimeRange
from worker.source import FlightSqlConfig, direct, flightsql
from worker.source.translate import translate_errors

QUERIES_PER_TRACE = 3  # process and threads, process_spans (a small process), async events


@pytest.fixture(scope="module")
def lake() -> Lake:
    return Lake(LakeConfig(seed=13, processes=("small",)))


@pytest.fixture
def adbc_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements read over ADBC (``_Query``) from now on."""
    sent: list[str] = []

    class Counted(flightsql._Query):
        def __init__(self, conn: Any, sql: str, *args: Any, **kwargs: Any) -> None:
            sent.append(sql)
            super().__init__(conn, sql, *args, **kwargs)

    monkeypatch.setattr(flightsql, "_Query", Counted)
    return sent


async def test_direct_tickets_never_read_over_adbc(lake: Lake, adbc_queries: list[str]) -> None:
    p = lake.processes[0]
    with start_devserver(lake) as server:
        async with open_source(server.url, direct_tickets="off") as off:
            expected = await whole_trace(off, p.process_id)
        assert len(adbc_queries) == QUERIES_PER_TRACE
        adbc_queries.clear()
        async with open_source(server.url, direct_tickets="on") as on:
            before = server.streams_opened
            got = await whole_trace(on, p.process_id)
            assert server.streams_opened - before == QUERIES_PER_TRACE
            assert on._releaser.pending == 0  # nothing of ADBC's to release
        assert adbc_queries == []
        async with open_source(server.url) as auto:
            await whole_trace(auto, p.process_id)
            assert len(adbc_queries) == 1  # the query that learnt the tickets
            again = await whole_trace(auto, p.process_id)
        assert len(adbc_queries) == 1
    assert got == expected and again == expected
    assert dict(on.calls) == {"connect": 1, "DoGet": QUERIES_PER_TRACE}  # one client, reused


@pytest.mark.timeout(60, method="thread")
async def test_a_direct_read_stalled_mid_stream_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch timeout ends a read stalled after rows arrived, and the thread blocked in it returns
    (the stream's cancel ended it) while the service is still stalled. The server itself holds every
    thread-span stream after its first batch, so the stall is mid-stream whatever the timing (a
    proxy's stall could catch a DoGet still waiting for its schema, which cannot be cancelled)."""
    lake = Lake(LakeConfig(seed=3, processes=("large",), large_spans=300_000))
    p = lake.process_of_kind("large")
    time_range = TimeRange(p.begin_ns, p.end_ns)
    ended = threading.Event()
    original = direct.DirectQuery.next_batch

    def next_batch(self: direct.DirectQuery) -> pa.RecordBatch | None:
        try:
            return original(self)
        except TraceWorkerError:
            ended.set()
            raise

    monkeypatch.setattr(direct.DirectQuery, "next_batch", next_batch)
    with start_devserver(lake) as server:
        async with open_source(server.url, direct_tickets="on", batch_timeout_s=0.5) as source:
            threads = await source.threads(p.process_id, time_range)
            server.stall_streams_after = 1
            rows = 0
            with pytest.raises(SourceBroken, match=r"sent nothing for 0\.5 s"):
                async for _thread, batch in source.thread_spans(threads, time_range):
                    if batch is not None:
                        rows += batch.num_rows
            assert 0 < rows < p.thread_span_count
            assert ended.wait(10), "the read blocked in its thread was not cancelled"
            assert not server.stalls_released.is_set()  # still stalled: only the cancel ended the read


async def test_a_direct_query_stalled_before_its_schema_is_left_behind(lake: Lake) -> None:
    """``do_get`` waits for the schema before it hands over a reader, and that wait cannot be
    cancelled: the query fails after the batch timeout, its client is not used again, and the source
    serves on a new one once the service answers (aclose on a stalled service: test_round_trips)."""
    p = lake.processes[0]
    with start_devserver(lake) as server, ChaosProxy(("127.0.0.1", server.port)) as proxy:
        url = f"grpc://127.0.0.1:{proxy.port}"
        async with open_source(url, direct_tickets="on", batch_timeout_s=0.5) as source:
            await source.process(p.process_id)
            proxy.set_mode("stall")
            with pytest.raises(SourceBroken, match=r"sent nothing for 0\.5 s while reading process query"):
                await source.process(p.process_id)
            proxy.set_mode("pass")
            assert (await source.process(p.process_id)).exe == p.exe
            assert source.calls["connect"] == 2


def _restartable(lake: Lake, port: int = 0) -> DevServer:
    return DevServer(lake, port=port).start()


async def test_a_failed_client_is_dropped_and_the_source_reconnects(lake: Lake) -> None:
    """A query that failed in transport does not leave its client for reuse (its channel would sit in
    reconnect backoff): the first query once the server is back succeeds on a new client."""
    p = lake.processes[0]
    server = _restartable(lake)
    port = server.port
    async with open_source(server.url, direct_tickets="on") as source:
        try:
            assert (await source.process(p.process_id)).exe == p.exe
        finally:
            server.stop()
        for _ in range(3):
            with pytest.raises(SourceUnavailable):
                await source.process(p.process_id)
        connects = source.calls["connect"]
        assert connects == 3  # the first failure on the client used before, then a new one each time
        with _restartable(lake, port) as server:
            assert (await source.process(p.process_id)).exe == p.exe
        assert source.calls["connect"] == connects + 1


def _flight(cls: type[Exception], message: str, code: str | None = None) -> Exception:
    """An error as pyarrow.flight raises it: a status from the server carries gRPC's debug context."""
    if code is not None:
        message += f". gRPC client debug context: {code}:{message}. Client context: OK"
    return cls(message)


@pytest.mark.parametrize(
    ("exc", "streaming", "expected"),
    [
        (_flight(fl.FlightUnavailableError, "failed to connect to all addresses", "UNAVAILABLE"), False,
         SourceUnavailable),
        (_flight(fl.FlightUnavailableError, "Stream removed", "UNAVAILABLE"), True, SourceBroken),
        (_flight(fl.FlightUnauthenticatedError, "invalid or missing bearer token", "UNAUTHENTICATED"),
         False, Unauthenticated),
        (_flight(fl.FlightUnauthorizedError, "no"), False, Unauthenticated),
        (_flight(pa.ArrowInvalid, "table function 'process_spans' not found", "INVALID_ARGUMENT"), False,
         QueryRejected),
        (_flight(pa.ArrowNotImplementedError, "DoGet of X is not implemented", "UNIMPLEMENTED"), False,
         QueryRejected),
        (_flight(fl.FlightServerError, "stream broken", "UNKNOWN"), True, SourceBroken),
        (_flight(fl.FlightCancelledError, "Stream removed", "CANCELLED"), True, SourceBroken),
        (pa.ArrowInvalid("Invalid IPC message: negative bit width"), True, BadSourceData),
    ],
)  # fmt: skip
def test_flight_errors_translate(exc: Exception, streaming: bool, expected: type[TraceWorkerError]) -> None:
    with pytest.raises(expected) as info, translate_errors("some query", streaming=streaming):
        raise exc
    assert info.value.__cause__ is exc
    message = str(info.value)
    assert message.startswith("some query: ") and "debug context" not in message


async def test_server_errors_over_flight_keep_their_kind(lake: Lake) -> None:
    """Errors the server sends for a direct ticket: a refusal to plan is QueryRejected, a bad token
    Unauthenticated, each naming the query."""
    with start_devserver(lake, token="t") as server:
        async with open_source(server.url, direct_tickets="on", token="t") as source:
            with pytest.raises(QueryRejected, match=r"^q: .*no_such_table"):
                await source.query_rows("SELECT * FROM no_such_table", "q", {})
        async with open_source(server.url, direct_tickets="on", token="x") as source:
            with pytest.raises(Unauthenticated, match=r"^process query: "):
                await source.process(lake.processes[0].process_id)
    assert FlightSqlConfig(server.url).direct_tickets == "auto"  # the default learns them


def test_a_failed_tls_handshake_is_one_clear_error_line(lake: Lake, tmp_path: Path) -> None:
    """gRPC core under pyarrow.flight logs a failed handshake at INFO as plain text on stderr (two
    lines around the worker's own output); the worker keeps it at ERROR, so a user sees only the
    command's error. A TLS client against a plain server, as a user would mistype the URL."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    env["TRACE_WORKER_FLIGHTSQL_DIRECT_TICKETS"] = "on"
    with start_devserver(lake) as server:
        url = f"grpc+tls://127.0.0.1:{server.port}"
        argv = [sys.executable, "-m", "worker", "generate", lake.processes[0].process_id, "--flightsql", url]
        argv += ["--tls-skip-verify", "--quiet", "-o", str(tmp_path / "t.pftrace")]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env, check=False
        )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("trace-worker generate: source_unavailable: process query:")
    assert "handshake" in lines[0].lower()
