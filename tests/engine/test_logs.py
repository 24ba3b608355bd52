"""Log entries and measures in the trace: every one in range once, with its time, priority, text, value."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from contracts.request import SpanTypes
from tests.engine.data import PROCESS, RANGE, THREADS, TS, Span, thread_batch
from tests.engine.decode import decode
from tests.engine.decode_logs import decode_logs
from worker.engine import TraceEncoder
from worker.engine.logs import MAX_BODY_CHARS, TRUNCATION_MARK
from worker.engine.tracks import pid_of, process_uuid, thread_tracks, xxh64
from worker.errors import BadSourceData
from worker.perfetto_pb import pb

PROC_UUID = process_uuid(PROCESS)
THREAD_UUID = {t.stream_id: t.uuid for t in thread_tracks(THREADS)}


def log_batch(
    times: Sequence[int],
    levels: Sequence[int | None],
    msgs: Sequence[str | None],
    *,
    targets: list[str] | None = None,
    streams: list[str] | None = None,
) -> pa.RecordBatch:
    n = len(times)
    return pa.record_batch(
        {
            "process_id": pa.array([PROCESS.process_id] * n),
            "stream_id": pa.array(streams or ["log-stream"] * n).dictionary_encode(),
            "time": pa.array(times, pa.int64()).cast(TS),
            "target": pa.array(targets or ["app::net"] * n).dictionary_encode(),
            "level": pa.array(levels, pa.int32()),
            "msg": pa.array(msgs, pa.string()),
        }
    )


def measure_batch(
    times: list[int],
    names: list[str],
    values: list[float | None],
    *,
    target: str = "app",
    units: list[str] | None = None,
) -> pa.RecordBatch:
    n = len(times)
    return pa.record_batch(
        {
            "time": pa.array(times, pa.int64()).cast(TS),
            "target": pa.array([target] * n).dictionary_encode(),
            "name": pa.array(names).dictionary_encode(),
            "unit": pa.array(units or ["bytes"] * n).dictionary_encode(),
            "value": pa.array(values, pa.float64()),
        }
    )


def encode_all(
    log_batches: Sequence[pa.RecordBatch] = (),
    measures: Sequence[pa.RecordBatch] = (),
    *,
    spans: bool = False,
    chunk_size: int = 1 << 20,
    logs: bool = True,
    metrics: bool = True,
) -> bytes:
    enc = TraceEncoder(
        PROCESS,
        THREADS,
        span_types=SpanTypes.BOTH,
        time_range=RANGE,
        chunk_size=chunk_size,
        logs=logs,
        metrics=metrics,
    )
    out = enc.start()
    if spans:
        out += enc.add_thread_spans("stream-a", thread_batch([Span(2_000_000, 3_000_000, 0, "work")]))
    for b in log_batches:
        out += enc.add_log_entries(b)
    for b in measures:
        out += enc.add_measures(b)
    out += enc.finish()
    return b"".join(out)


def test_every_entry_in_range_once_with_time_priority_text_and_track() -> None:
    times = [
        RANGE.begin_ns,
        2_000_000,
        2_000_000,
        5_000_000,
        RANGE.end_ns,
        RANGE.end_ns + 1,
        RANGE.begin_ns - 1,
    ]
    levels = [1, 2, 3, 4, 5, 6, 4]
    msgs = [f"message {i}" for i in range(len(times))]
    streams = ["stream-a", "stream-b", "log-stream", "stream-a", "other", "stream-a", "stream-a"]
    data = encode_all([log_batch(times, levels, msgs, streams=streams)], spans=True)
    got = decode_logs(data)
    assert got.problems == []
    assert decode(data).problems == []
    # Entries of streams that are not threads get a thread of their own per stream (Perfetto's
    # log panel lists only messages of threads), declared as one of the process's threads.
    log_uuid = {s: xxh64(s.encode()) for s in ("log-stream", "other")}
    expected = {
        (times[i], [7, 6, 5, 4, 3, 2][i], msgs[i], THREAD_UUID.get(streams[i]) or log_uuid[streams[i]])
        for i in range(5)
    }
    assert len(got.logs) == 5
    assert {(g.ts, g.prio, g.body, g.track) for g in got.logs} == expected
    assert {g.tag for g in got.logs} == {"app::net:0"} and {g.name for g in got.logs} == {"app::net"}
    assert {g.pid for g in got.logs} == {pid_of(PROC_UUID)}
    threads = {d.uuid: d.thread for d in got.descriptors.values() if d.HasField("thread")}
    assert len({t.tid for t in threads.values()}) == len(threads) == len(THREADS) + 2
    for stream, uuid in log_uuid.items():
        assert threads[uuid].thread_name == f"log stream {stream}"
        assert threads[uuid].tid >= 1 << 31 and threads[uuid].pid == pid_of(PROC_UUID)


def test_unknown_levels_are_info_and_logs_are_off_by_default() -> None:
    batch = log_batch([2_000_000] * 3, [0, 9, None], ["a", "b", "c"])
    assert sorted(g.prio for g in decode_logs(encode_all([batch])).logs) == [4, 4, 4]
    assert decode_logs(encode_all([batch], logs=False)).logs == []


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("", ""),
        (None, ""),
        ("héllo wörld ✓ 日本語 🎉", "héllo wörld ✓ 日本語 🎉"),
        ("a\x00b\x00", "a\u2400b\u2400"),
        ("x" * (MAX_BODY_CHARS + 5), "x" * MAX_BODY_CHARS + TRUNCATION_MARK),
        ("é" * 200_000, "é" * MAX_BODY_CHARS + TRUNCATION_MARK),
    ],
)
def test_texts_are_escaped_or_cut_never_broken(given: str | None, shown: str) -> None:
    batch = log_batch([2_000_000, 3_000_000], [4, 4], [given, "after"])
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.BOTH, time_range=RANGE, logs=True)
    data = b"".join(enc.start() + enc.add_log_entries(batch) + enc.finish())
    got = decode_logs(data)
    assert got.problems == []
    assert [g.body for g in sorted(got.logs)] == [shown, "after"]
    assert enc.stats.truncated_logs == (1 if shown.endswith(TRUNCATION_MARK) else 0)


def test_invalid_utf8_is_replaced() -> None:
    raw = pa.array([b"ok \xff\xfe end", b"fine"], pa.binary())
    batch = log_batch([2_000_000, 3_000_000], [4, 4], ["", ""]).set_column(5, "msg", raw)
    got = decode_logs(encode_all([batch]))
    assert got.problems == []
    assert sorted(g.body for g in got.logs) == ["fine", "ok \ufffd\ufffd end"]


def test_many_entries_across_batches_and_small_chunks_keep_interning_valid() -> None:
    rng = np.random.default_rng(3)
    batches = []
    expected = set()
    for b in range(3):
        n = 70_000 if b == 1 else 500
        times = np.sort(rng.integers(RANGE.begin_ns, RANGE.end_ns, n)).tolist()
        msgs = [f"b{b} e{i} " + "y" * int(rng.integers(0, 300)) for i in range(n)]
        levels = rng.integers(1, 7, n).tolist()
        batches.append(log_batch(times, levels, msgs))
        expected |= {(t, 8 - lv, m) for t, lv, m in zip(times, levels, msgs, strict=True)}
    data = encode_all(batches, chunk_size=4096)
    got = decode_logs(data)
    assert got.problems == []
    assert len(got.logs) == len(expected)
    assert {(g.ts, g.prio, g.body) for g in got.logs} == expected


def test_measures_become_one_counter_track_per_target_and_name_in_time_order() -> None:
    times = [RANGE.begin_ns, 4_000_000, 3_000_000, 5_000_000, RANGE.end_ns + 5, 6_000_000]
    names = ["mem", "mem", "fps", "mem", "mem", "fps"]
    values = [1.5, -2.25, 60.0, 1e300, 7.0, None]
    first = measure_batch(times, names, values, units=["bytes", "bytes", "count", "bytes", "bytes", "count"])
    second = measure_batch([7_000_000], ["mem"], [float("nan")], target="other", units=["ns"])
    data = encode_all(measures=[first, second])
    got = decode_logs(data)
    assert got.problems == []
    by_name: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for uuid, points in got.counters.items():
        desc = got.descriptors[uuid]
        assert desc.parent_uuid == PROC_UUID
        assert [t for t, _ in points] == sorted(t for t, _ in points)
        by_name[(desc.name, desc.counter.unit_name, int(desc.counter.unit))] = points
    # The same metric under two targets: two tracks, told apart by their names.
    assert set(by_name) == {
        ("mem (app)", "bytes", pb.CounterDescriptor.UNIT_SIZE_BYTES),
        ("fps (app)", "count", pb.CounterDescriptor.UNIT_COUNT),
        ("mem (other)", "ns", pb.CounterDescriptor.UNIT_TIME_NS),
    }
    assert by_name[("mem (app)", "bytes", 3)] == [
        (RANGE.begin_ns, 1.5),
        (4_000_000, -2.25),
        (5_000_000, 1e300),
    ]
    assert by_name[("fps (app)", "count", 2)] == [(3_000_000, 60.0)]
    (nan,) = by_name[("mem (other)", "ns", 1)]
    assert nan[0] == 7_000_000 and np.isnan(nan[1])


def test_counter_tracks_are_described_once_across_batches() -> None:
    batches = [measure_batch([2_000_000 + i, 2_000_100 + i], ["a", "b"], [float(i), 2.0]) for i in range(5)]
    got = decode_logs(encode_all(measures=batches))
    assert got.problems == []
    counter_descs = [d for d in got.descriptors.values() if d.HasField("counter")]
    assert len(counter_descs) == 2
    assert sum(len(v) for v in got.counters.values()) == 10


def test_bad_columns_fail_clearly() -> None:
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.BOTH, time_range=RANGE, logs=True, metrics=True)
    enc.start()
    with pytest.raises(BadSourceData, match="'msg'"):
        enc.add_log_entries(log_batch([2_000_000], [4], ["x"]).drop_columns(["msg"]))
    bad = measure_batch([2_000_000], ["a"], [1.0]).set_column(4, "value", pa.array(["x"]))
    with pytest.raises(BadSourceData, match="'value' must be numbers"):
        enc.add_measures(bad)


def test_logs_and_spans_share_interning_without_breaking_spans() -> None:
    batch = log_batch([2_500_000], [3], ["inside the span"], streams=["stream-a"])
    data = encode_all([batch], spans=True)
    decoded = decode(data)
    assert decoded.problems == []
    assert [s.name for s in decoded.on_track(THREAD_UUID["stream-a"])] == ["work"]
    (log,) = decode_logs(data).logs
    assert log.track == THREAD_UUID["stream-a"] and log.prio == 5


def test_same_bytes_whatever_the_batching_and_the_order_of_ties() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    times = np.sort(rng.integers(2_000_000, 2_000_050, n)).tolist()  # many ties
    msgs = [f"m{int(v)}" for v in rng.integers(0, 500, n)]
    levels = rng.integers(1, 7, n).tolist()
    names = [f"g{int(v)}" for v in rng.integers(0, 4, n)]
    values = rng.random(n).tolist()

    def run(order: np.ndarray, cuts: list[int]) -> bytes:
        t = [times[i] for i in order]
        logs = log_batch(t, [levels[i] for i in order], [msgs[i] for i in order])
        meas = measure_batch(t, [names[i] for i in order], [values[i] for i in order])
        bounds = [0, *cuts, n]
        return encode_all(
            [logs.slice(a, b - a) for a, b in itertools.pairwise(bounds)],
            [meas.slice(a, b - a) for a, b in itertools.pairwise(bounds)],
        )

    base = run(np.arange(n), [])
    # Permute rows only within runs of equal time (what a server may do), and cut batches anywhere.
    shuffled = np.lexsort((rng.random(n), np.array(times)))
    assert run(shuffled, [7, 1500, 2999]) == base
    assert decode_logs(base).problems == []


def test_log_stream_tracks_follow_first_appearance_whatever_the_dictionary() -> None:
    times = [2_000_000, 2_000_001, 2_000_002, 2_000_003]
    streams = ["s-late", None, "s-late", "s-early"]

    def run(dictionary: list[str]) -> bytes:
        # The same rows with the stream column's dictionary in another order (as another server might).
        idx = pa.array([None if s is None else dictionary.index(s) for s in streams], pa.int32())
        batch = log_batch(times, [4] * 4, ["a", "b", "c", "d"])
        stream_col = pa.DictionaryArray.from_arrays(idx, pa.array(dictionary))
        return encode_all([batch.set_column(1, "stream_id", stream_col)])

    data = run(["s-late", "s-early", "unused"])
    assert run(["unused", "s-early", "s-late"]) == data
    got = decode_logs(data)
    assert got.problems == []
    threads = [
        d for d in got.descriptors.values() if d.HasField("thread") and d.uuid not in THREAD_UUID.values()
    ]
    # Declared when first met, in row order; a null stream id is the stream "", no track for "unused".
    assert [d.thread.thread_name for d in threads] == [
        "log stream s-late",
        "log stream",
        "log stream s-early",
    ]
    assert [g.track for g in sorted(got.logs)] == [
        xxh64(b"s-late"),
        xxh64(b""),
        xxh64(b"s-late"),
        xxh64(b"s-early"),
    ]


def _measures(
    targets: list[str | None], names: list[str | None], values: pa.Array, begin: int = 2_000_000
) -> pa.RecordBatch:
    n = len(targets)
    return pa.record_batch(
        {
            "time": pa.array([begin + i for i in range(n)], pa.int64()).cast(TS),
            "target": pa.array(targets, pa.string()).dictionary_encode(),
            "name": pa.array(names, pa.string()).dictionary_encode(),
            "unit": pa.array(["count"] * n).dictionary_encode(),
            "value": values,
        }
    )


def test_pairs_that_join_to_the_same_text_get_their_own_tracks() -> None:
    # Joined by NUL, ("a\0b", "c") and ("a", "b\0c") are the same bytes; the uuid must tell them apart.
    # A null target or name is the empty text: ("", "x") and (null, "x") are one track.
    batch = _measures(["a\0b", "a", "", None], ["c", "b\0c", "x", "x"], pa.array([1.0, 2.0, 3.0, 4.0]))
    data = encode_all(measures=[batch])
    got = decode_logs(data)
    assert got.problems == []
    by_name = {got.descriptors[u].name: points for u, points in got.counters.items()}
    assert by_name == {
        "c (a\u2400b)": [(2_000_000, 1.0)],
        "b\u2400c (a)": [(2_000_001, 2.0)],
        "x": [(2_000_002, 3.0), (2_000_003, 4.0)],
    }
    described = [
        p.track_descriptor for p in pb.Trace.FromString(data).packet if p.track_descriptor.HasField("counter")
    ]
    assert len(described) == len({d.uuid for d in described}) == 3
    assert {d.description for d in described} >= {
        "Micromegas measure 'c' of target 'a\\x00b', unit 'count'",
        "Micromegas measure 'b\\x00c' of target 'a', unit 'count'",
    }


@pytest.mark.parametrize(
    "values",
    [
        pa.array([2**53 + 1, -(2**63), 2**63 - 1, 7], pa.int64()),
        pa.array([2**53 + 1, 2**64 - 1, 0, 7], pa.uint64()),
    ],
)
def test_integer_values_beyond_double_precision_become_the_nearest_double(values: pa.Array) -> None:
    # Perfetto counters are doubles: the nearest double, not a failed job; batches of floats after
    # batches of integers are one stream of the same counter.
    ints = _measures(["app"] * 4, ["big"] * 4, values)
    floats = _measures(["app"] * 2, ["big"] * 2, pa.array([0.5, 1.5], pa.float32()), begin=3_000_000)
    got = decode_logs(encode_all(measures=[ints, floats]))
    assert got.problems == []
    ((_, points),) = got.counters.items()
    assert [v for _, v in points] == [float(v) for v in values.to_pylist()] + [0.5, 1.5]


def test_a_null_and_an_empty_stream_id_are_one_log_stream_track() -> None:
    def batch(times: list[int], streams: list[str | None]) -> pa.RecordBatch:
        stream_col = pa.array(streams, pa.string()).dictionary_encode()
        return log_batch(times, [4] * len(times), ["m"] * len(times)).set_column(1, "stream_id", stream_col)

    data = encode_all(
        [batch([2_000_000, 2_000_001], ["", None]), batch([3_000_000], [None]), batch([4_000_000], [""])]
    )
    got = decode_logs(data)
    assert got.problems == []
    described = [
        p.track_descriptor.uuid
        for p in pb.Trace.FromString(data).packet
        if p.HasField("track_descriptor") and p.track_descriptor.thread.thread_name == "log stream"
    ]
    assert described == [xxh64(b"")]
    assert [g.track for g in got.logs] == [xxh64(b"")] * 4
