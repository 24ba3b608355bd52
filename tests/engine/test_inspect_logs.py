"""`trace-worker inspect` on log messages, counters and repeated track descriptors: hand-built hostile
traces give their defects; engine traces with logs and measures (in memory and over the devserver's
wire) inspect clean with every log message and counter value counted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from contracts.request import SpanTypes
from tests.engine.data import PROCESS, RANGE
from tests.engine.decode_logs import decode_logs
from tests.engine.test_inspect import _NoTemplates, header, packet, trace_bytes
from tests.engine.test_logs import encode_all, log_batch, measure_batch
from tests.support.devserver import small_lake, start_devserver
from worker.cli import main
from worker.engine.tracks import process_uuid
from worker.inspect import InspectReport, inspect_trace
from worker.perfetto_pb import pb
from worker.pipeline import TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource

PROC, THREAD, PLAIN, COUNTER = 10, 11, 12, 13


def tracks() -> list[pb.TracePacket]:
    return [
        packet(track_descriptor=pb.TrackDescriptor(uuid=PROC, process=pb.ProcessDescriptor(pid=5))),
        packet(
            track_descriptor=pb.TrackDescriptor(
                uuid=THREAD, parent_uuid=PROC, thread=pb.ThreadDescriptor(pid=5, tid=6, thread_name="main")
            )
        ),
        packet(track_descriptor=pb.TrackDescriptor(uuid=PLAIN, parent_uuid=THREAD, name="under thread")),
        packet(
            track_descriptor=pb.TrackDescriptor(
                uuid=COUNTER, parent_uuid=PROC, name="mem", counter=pb.CounterDescriptor(unit_name="bytes")
            )
        ),
    ]


def body(iid: int, text: str) -> pb.InternedData:
    return pb.InternedData(log_message_body=[pb.LogMessageBody(iid=iid, body=text)])


def log(
    ts: int, track: int, body_iid: int, loc: int = 1, interned: pb.InternedData | None = None
) -> pb.TracePacket:
    te = pb.TrackEvent(
        type=pb.TrackEvent.TYPE_INSTANT,
        track_uuid=track,
        name_iid=1,
        log_message=pb.LogMessage(source_location_iid=loc, body_iid=body_iid, prio=pb.LogMessage.PRIO_WARN),
    )
    p = packet(timestamp=ts, track_event=te)
    if interned is not None:
        p.interned_data.CopyFrom(interned)
    return p


def counter(ts: int, track: int, value: float) -> pb.TracePacket:
    te = pb.TrackEvent(type=pb.TrackEvent.TYPE_COUNTER, track_uuid=track, double_counter_value=value)
    return packet(timestamp=ts, track_event=te)


def instant(ts: int, track: int) -> pb.TracePacket:
    te = pb.TrackEvent(type=pb.TrackEvent.TYPE_INSTANT, track_uuid=track, name_iid=2)
    return packet(timestamp=ts, track_event=te)


def inspect(packets: list[pb.TracePacket]) -> InspectReport:
    return inspect_trace(io.BytesIO(trace_bytes(packets)))


def by_uuid(report: InspectReport) -> dict[int, tuple[str, int, int, int]]:
    return {t.uuid: (t.kind, t.slices, t.logs, t.counter_values) for t in report.tracks}


def test_logs_and_counters_are_counted_apart_from_slices() -> None:
    packets = [*header(), *tracks()]
    packets += [log(100, THREAD, 1, interned=body(1, "one")), log(101, PLAIN, 2, interned=body(2, "two"))]
    packets += [instant(102, THREAD), counter(103, COUNTER, 1.5), counter(104, COUNTER, 2.5)]
    report = inspect(packets)
    assert report.ok, report.defects
    assert (report.slices, report.logs, report.counter_values) == (1, 2, 2)
    got = by_uuid(report)
    assert got[THREAD] == ("thread", 1, 1, 0)
    assert got[PLAIN] == ("track", 0, 1, 0)  # a plain track under a thread belongs to the thread
    assert got[COUNTER] == ("counter", 0, 0, 2)
    assert report.interned["log_message_bodies"] == 2


def test_log_message_with_undefined_body_and_source_location() -> None:
    later = packet(interned_data=body(5, "too late"))
    report = inspect([*header(), *tracks(), log(100, THREAD, 5, loc=9), later, log(101, THREAD, 5)])
    assert report.defect_counts == {"iid_undefined": 1}, report.defects
    (defect,) = report.defects
    assert "log message source location 9" in defect.message and "log message body 5" in defect.message
    assert report.logs == 2  # Perfetto still imports the event


def test_body_defined_in_another_sequence_is_undefined() -> None:
    other = packet(seq=2, flags=3, interned_data=body(1, "elsewhere"))
    report = inspect([*header(), *tracks(), other, log(100, THREAD, 1)])
    assert report.defect_counts == {"iid_undefined": 1}


def test_log_message_on_a_process_track_has_no_thread() -> None:
    packets = [*header(), *tracks()]
    packets += [log(100 + i, PROC, i + 1, interned=body(i + 1, f"m{i}")) for i in range(3)]
    report = inspect(packets)
    assert report.defect_counts == {"log_without_thread": 3}, report.defects
    assert "LogMessage without thread association" in report.defects[0].message
    assert by_uuid(report)[PROC] == ("process", 0, 3, 0)


def test_log_message_on_a_plain_track_under_the_process_has_no_thread() -> None:
    lone = packet(track_descriptor=pb.TrackDescriptor(uuid=77, parent_uuid=PROC, name="logs"))
    report = inspect([*header(), *tracks(), lone, log(100, 77, 1, interned=body(1, "x"))])
    assert report.defect_counts == {"log_without_thread": 1}


@pytest.mark.parametrize("walk_only", [False, True])
def test_counter_values_on_a_thread_track(monkeypatch: pytest.MonkeyPatch, walk_only: bool) -> None:
    # Many alike packets: decoded by a template (or by the columnar walk alone), not one by one.
    if walk_only:
        monkeypatch.setattr("worker.inspect.Templates", _NoTemplates)
    packets = [*header(), *tracks(), *(counter(100 + i, THREAD, float(i)) for i in range(200))]
    packets += [counter(1000 + i, COUNTER, float(i)) for i in range(50)]
    report = inspect(packets)
    assert report.defect_counts == {"counter_on_non_counter_track": 200}, report.defects
    assert by_uuid(report)[THREAD] == ("thread", 0, 0, 200)
    assert by_uuid(report)[COUNTER] == ("counter", 0, 0, 50)


def test_same_uuid_described_twice_with_other_content() -> None:
    again = packet(track_descriptor=pb.TrackDescriptor(uuid=PLAIN, parent_uuid=THREAD, name="under thread"))
    renamed = packet(track_descriptor=pb.TrackDescriptor(uuid=PLAIN, parent_uuid=THREAD, name="renamed"))
    moved = packet(
        track_descriptor=pb.TrackDescriptor(
            uuid=THREAD, parent_uuid=PROC, thread=pb.ThreadDescriptor(pid=5, tid=7, thread_name="main")
        )
    )
    assert inspect([*header(), *tracks(), again]).ok  # the same bytes again are fine
    report = inspect([*header(), *tracks(), again, renamed, moved])
    assert report.defect_counts == {"conflicting_descriptor": 2}, report.defects
    assert {t.uuid: t.name for t in report.tracks}[PLAIN] == "under thread"  # the first one is listed


def test_conflicting_descriptor_across_blocks() -> None:
    filler = [instant(200 + i, THREAD) for i in range(300)]
    renamed = packet(track_descriptor=pb.TrackDescriptor(uuid=PLAIN, parent_uuid=THREAD, name="renamed"))
    data = trace_bytes([*header(), *tracks(), *filler, renamed])
    report = inspect_trace(io.BytesIO(data), progress=lambda _: None, progress_every=256)
    assert report.defect_counts == {"conflicting_descriptor": 1}


def test_engine_logs_and_measures_inspect_clean() -> None:
    rng = np.random.default_rng(4)
    n = 3000
    times = np.sort(rng.integers(RANGE.begin_ns, RANGE.end_ns, n)).tolist()
    streams = [["stream-a", "log-stream", "other"][i % 3] for i in range(n)]
    logs = log_batch(times, rng.integers(1, 7, n).tolist(), [f"m{i}" for i in range(n)], streams=streams)
    m_times = np.sort(rng.integers(RANGE.begin_ns, RANGE.end_ns, 2 * n)).tolist()
    names = [["mem", "fps", "queue"][i % 3] for i in range(2 * n)]
    measures = measure_batch(m_times, names, rng.normal(size=2 * n).tolist())
    data = encode_all([logs], [measures], spans=True, chunk_size=8192)
    report = inspect_trace(io.BytesIO(data))
    assert report.ok, report.defects
    assert (report.logs, report.counter_values, report.slices) == (n, 2 * n, 1)
    counters = [t for t in report.tracks if t.kind == "counter"]
    assert sorted(t.name for t in counters) == ["fps (app)", "mem (app)", "queue (app)"]  # name (target)
    assert all(t.counter_values == 2 * n // 3 and t.parent == process_uuid(PROCESS) for t in counters)
    assert report.interned["log_message_bodies"] == n
    decoded = decode_logs(data)
    per_track = {t.uuid: t.logs for t in report.tracks if t.logs}
    assert per_track == {u: sum(g.track == u for g in decoded.logs) for u in {g.track for g in decoded.logs}}


async def test_devserver_trace_with_logs_and_metrics_inspects_clean(tmp_path: Path) -> None:
    lake = small_lake(seed=9)
    p = lake.processes[0]
    with start_devserver(lake) as server:
        source = FlightSqlSource(FlightSqlConfig(server.url, concurrency=2))
        try:
            spec = TraceSpec(p.process_id, None, None, SpanTypes.BOTH, logs=True, metrics=True)
            data = b"".join([c async for c in generate_trace(source, spec)])
        finally:
            await source.aclose()
    decoded = decode_logs(data)
    assert decoded.problems == []
    report = inspect_trace(io.BytesIO(data))
    assert report.ok, report.defects
    assert report.logs == len(decoded.logs) > 50
    assert report.counter_values == sum(len(v) for v in decoded.counters.values()) > 500
    path = tmp_path / "t.pftrace"
    path.write_bytes(data)
    assert main(["inspect", str(path), "--json"]) == 0


def test_cli_shows_log_and_counter_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.pftrace"
    packets = [*header(), *tracks(), log(100, PROC, 1, interned=body(1, "x")), counter(101, COUNTER, 2.0)]
    path.write_bytes(trace_bytes(packets))
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "logs: 1, counter values: 1" in out
    assert "counter   'mem'" in out and "counter_values=1" in out
    assert "log_without_thread" in out
    assert main(["inspect", str(path), "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert (got["logs"], got["counter_values"]) == (1, 1)
    assert got["defect_counts"] == {"log_without_thread": 1}
