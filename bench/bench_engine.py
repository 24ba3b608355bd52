"""Engine benchmark: columnar engine vs the naive per-packet protobuf writer, async pairing, peak memory.

Run: ``.venv/bin/python -m bench.bench_engine`` (prints markdown tables). Rates are given per CPU second
of this one single-threaded process (robust on a shared machine) and per wall-clock second; each is the
best of 3 runs (the naive writer: 1 run). Options: ``--spans N`` for
the throughput runs (default 1,000,000), ``--naive-spans N`` for the naive baseline (default 200,000;
its rate is per span, so a smaller sample is enough), ``--rss N`` (internal: encode N thread + N async
spans in this process and print its peak RSS in KiB, from /proc/self/status VmHWM).
``--logs N`` / ``--measures N`` size the log entry and measure runs (defaults 2,000,000 and 5,000,000);
``--only-logs`` runs just those (and their memory check, ``--rss-logs N``: N entries + N measures).

Inputs are synthetic, generated batch by batch so the input is never held whole: thread spans are a
repeated 10-span call tree (depths 0-3, 50 names, 8 targets, 20 files) with dictionary-encoded strings
(int32 keys, as Micromegas sends with ``preserve_dictionary``) or plain strings; async spans overlap
(~32 open at a time) with parents. Output chunks are counted and dropped.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from contracts.request import SpanTypes
from worker.engine import TraceEncoder
from worker.model import ProcessInfo, ThreadInfo, TimeRange
from worker.perfetto_pb import pb

PROCESS = ProcessInfo(process_id="34d7c06d-3163-4111-863e-c5fc09d22d51", exe="bench")
THREADS = [ThreadInfo(f"stream-{i}", f"thread{i}", str(1000 + i)) for i in range(4)]
T0 = 1_760_000_000_000_000_000
RANGE = TimeRange(T0, T0 + 10**15)
BATCH = 65_536
TS = pa.timestamp("ns", tz="+00:00")

# One call tree of 10 spans in preorder: (begin offset, end offset, depth); a frame lasts 1000 ns.
_TREE = np.array(
    [(0, 900, 0), (10, 400, 1), (20, 100, 2), (100, 300, 2), (150, 200, 3), (400, 400, 1),
     (400, 800, 1), (450, 700, 2), (700, 700, 2), (800, 890, 1)],
    dtype=np.int64,
)  # fmt: skip
_NAMES = pa.array([f"module::function_{i}" for i in range(50)])
_TARGETS = pa.array([f"crate_{i}" for i in range(8)])
_FILES = pa.array([f"src/path/to/file_{i}.rs" for i in range(20)])


def _strings(values: pa.Array, idx: np.ndarray, plain: bool) -> pa.Array:
    arr = pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), values)
    return arr.cast(pa.string()) if plain else arr


def thread_batches(n: int, plain: bool = False) -> Iterator[pa.RecordBatch]:
    """n spans of synthetic call trees, in batches of BATCH rows."""
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(n, start + BATCH), dtype=np.int64)
        frame, k = np.divmod(rows, len(_TREE))
        begin = T0 + frame * 1000 + _TREE[k, 0]
        end = T0 + frame * 1000 + _TREE[k, 1]
        yield pa.record_batch(
            {
                "begin": pa.array(begin).cast(TS),
                "end": pa.array(end).cast(TS),
                "name": _strings(_NAMES, (rows * 7 + k) % 50, plain),
                "target": _strings(_TARGETS, k % 8, plain),
                "filename": _strings(_FILES, (rows + k) % 20, plain),
                "line": pa.array(((k * 13) % 500).astype(np.uint32)),
                "depth": pa.array(_TREE[k, 2].astype(np.uint32)),
            }
        )


def async_batches(n: int, seed: int = 1, *, tied: bool = False) -> Iterator[pa.RecordBatch]:
    """Events of n overlapping async spans in time order, in batches of BATCH events; every 4th span
    is the child of the one before (``tied``: it begins at its parent's very nanosecond, the case
    whose flow needs the child held until the parent's BEGIN is written)."""
    rng = np.random.default_rng(seed)
    per = BATCH // 2
    for start in range(0, n, per):
        count = min(per, n - start)
        sid = np.arange(start + 1, start + count + 1, dtype=np.int64)
        begin = T0 + sid * 100
        # Each span ends within its window so a batch's spans close in the batch or the next one.
        end = begin + rng.integers(0, 6400, count)
        parent = np.where(sid % 4 == 0, sid - 1, 0)
        if tied:
            begin = np.where(parent > 0, T0 + parent * 100, begin)
        times = np.concatenate((begin, end))
        order = np.argsort(times, kind="stable")
        kinds = np.concatenate((np.zeros(count, np.int32), np.ones(count, np.int32)))[order]
        ids = np.concatenate((sid, sid))[order]
        yield pa.record_batch(
            {
                "stream_id": _strings(pa.array(["s0", "s1"]), ids % 2, False),
                "time": pa.array(times[order]).cast(TS),
                "event_type": _strings(pa.array(["begin", "end"]), kinds, False),
                "span_id": pa.array(ids),
                "parent_span_id": pa.array(np.concatenate((parent, parent))[order]),
                "depth": pa.array((ids % 2).astype(np.uint32)),
                "name": _strings(_NAMES, ids % 50, False),
                "target": _strings(_TARGETS, ids % 8, False),
                "filename": _strings(_FILES, ids % 20, False),
                "line": pa.array((ids % 300).astype(np.uint32)),
            }
        )


_MESSAGES = pa.array(
    [
        "request served in",
        "cache miss for key",
        "retrying connection to db-replica-2, attempt",
        "frame budget exceeded by",
        "loaded asset id",
    ]
)
_METRICS = [("app::net", "requests", "count"), ("app::mem", "heap", "bytes"), ("app::frame", "time", "ns")]


def log_batches(n: int) -> Iterator[pa.RecordBatch]:
    """n log entries (~40-byte messages, 8 targets, one log stream), in batches of BATCH rows."""
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(n, start + BATCH), dtype=np.int64)
        text = pa.compute.binary_join_element_wise(
            _MESSAGES.take(pa.array(rows % 5)), pa.array(rows * 7919 % 100_000).cast(pa.string()), " "
        )
        yield pa.record_batch(
            {
                "stream_id": _strings(pa.array(["log-stream"]), np.zeros(len(rows), dtype=np.int64), False),
                "time": pa.array(T0 + rows * 1000).cast(TS),
                "level": pa.array((rows % 6 + 1).astype(np.int32)),
                "target": _strings(_TARGETS, rows % 8, False),
                "msg": text,
            }
        )


def measure_batches(n: int) -> Iterator[pa.RecordBatch]:
    """n measures of 3 metrics, in batches of BATCH rows."""
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(n, start + BATCH), dtype=np.int64)
        k = rows % len(_METRICS)
        yield pa.record_batch(
            {
                "time": pa.array(T0 + rows * 100).cast(TS),
                "target": _strings(pa.array([m[0] for m in _METRICS]), k, False),
                "name": _strings(pa.array([m[1] for m in _METRICS]), k, False),
                "unit": _strings(pa.array([m[2] for m in _METRICS]), k, False),
                "value": pa.array(np.sin(rows / 1000.0) * 100.0),
            }
        )


def encode_views(
    logs: list[pa.RecordBatch], measures: list[pa.RecordBatch]
) -> tuple[tuple[float, float], int]:
    enc = TraceEncoder(
        PROCESS, THREADS, span_types=SpanTypes.ASYNC, time_range=RANGE, logs=True, metrics=True
    )
    size = sum(len(c) for c in enc.start())
    t = _clock()
    for batch in logs:
        size += sum(len(c) for c in enc.add_log_entries(batch))
    for batch in measures:
        size += sum(len(c) for c in enc.add_measures(batch))
    size += sum(len(c) for c in enc.finish())
    return _since(t), size


def rss_logs_child(n: int) -> None:
    """Encode n log entries and n measures from batches made on the fly; print peak RSS (KiB)."""
    enc = TraceEncoder(
        PROCESS, THREADS, span_types=SpanTypes.ASYNC, time_range=RANGE, logs=True, metrics=True
    )
    size = sum(len(c) for c in enc.start())
    for batch in log_batches(n):
        size += sum(len(c) for c in enc.add_log_entries(batch))
    for batch in measure_batches(n):
        size += sum(len(c) for c in enc.add_measures(batch))
    size += sum(len(c) for c in enc.finish())
    print(_peak_rss_kib(), size)


def logs_report(n_logs: int, n_measures: int, rss_sizes: tuple[int, int]) -> None:
    """Markdown tables: log entries/s and measures/s on one core, and peak RSS at two sizes."""
    peaks = [_peak(n, "--rss-logs") for n in rss_sizes]
    logs = list(log_batches(n_logs))
    best_logs = min((encode_views(logs, []) for _ in range(3)), key=lambda r: r[0][1])
    del logs
    measures = list(measure_batches(n_measures))
    best_measures = min((encode_views([], measures) for _ in range(3)), key=lambda r: r[0][1])
    del measures
    print("| measurement | rows/s (CPU time) | rows/s (wall) | bytes/row |")
    print("|---|---:|---:|---:|")
    for label, ((wall, cpu), size), n in (
        ("log entries -> log messages", best_logs, n_logs),
        ("measures -> counter values", best_measures, n_measures),
    ):
        print(f"| {label} | {n / cpu:,.0f} | {n / wall:,.0f} | {size / n:.1f} |")
    print()
    print("| peak RSS (log entries + measures each) | KiB |")
    print("|---|---:|")
    for n, (peak, _) in zip(rss_sizes, peaks, strict=True):
        print(f"| {n:,} | {peak:,} |")
    print(f"| ratio | {peaks[1][0] / peaks[0][0]:.3f} |")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) since ``t``."""
    return time.perf_counter() - t[0], time.process_time() - t[1]


def encode_threads(batches: list[pa.RecordBatch]) -> tuple[tuple[float, float], int]:
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.THREAD, time_range=RANGE)
    size = 0
    t = _clock()
    for chunk in enc.start():
        size += len(chunk)
    for batch in batches:
        for chunk in enc.add_thread_spans("stream-0", batch):
            size += len(chunk)
    for chunk in enc.finish():
        size += len(chunk)
    return _since(t), size


def encode_async(batches: list[pa.RecordBatch]) -> tuple[tuple[float, float], int]:
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.ASYNC, time_range=RANGE)
    size = 0
    t = _clock()
    for chunk in enc.start():
        size += len(chunk)
    for batch in batches:
        for chunk in enc.add_async_events(batch):
            size += len(chunk)
    for chunk in enc.finish():
        size += len(chunk)
    return _since(t), size


def naive_threads(batches: list[pa.RecordBatch]) -> tuple[tuple[float, float], int]:
    """The naive writer: one TracePacket object per event, serialised one by one (same interning)."""
    track = 12345678901234567
    size = 0
    t = _clock()
    names: dict[str, int] = {}
    cats: dict[str, int] = {}
    locs: dict[tuple[str, int], int] = {}
    for batch in batches:
        cols = batch.drop_columns(["begin", "end"]).to_pydict()
        cols["begin"] = batch.column("begin").cast(pa.int64()).to_pylist()
        cols["end"] = batch.column("end").cast(pa.int64()).to_pylist()
        stack: list[tuple[int, int, int, int, int]] = []  # (depth, end, name, cat, loc)
        rows = zip(cols["begin"], cols["end"], cols["name"], cols["target"], cols["filename"], cols["line"],
                   cols["depth"], strict=True)  # fmt: skip
        for begin, end, name, target, filename, line, depth in rows:
            packets = []
            while stack and stack[-1][0] >= depth:
                _, e, n, c, loc = stack.pop()
                packets.append(_naive_event(e, 2, track, name=n, cat=c, loc=loc, interned=None))
            interned = pb.InternedData()
            if name not in names:
                names[name] = len(names) + 1
                interned.event_names.add(iid=names[name], name=name)
            if target not in cats:
                cats[target] = len(cats) + 1
                interned.event_categories.add(iid=cats[target], name=target)
            if (filename, line) not in locs:
                locs[(filename, line)] = len(locs) + 1
                interned.source_locations.add(iid=len(locs), file_name=filename, line_number=line)
            n, c, loc = names[name], cats[target], locs[(filename, line)]
            packets.append(_naive_event(begin, 1, track, name=n, cat=c, loc=loc, interned=interned))
            stack.append((depth, end, n, c, loc))
            for p in packets:
                size += len(pb.Trace(packet=[p]).SerializeToString())
    return _since(t), size


def _naive_event(
    ts: int, kind: int, track: int, *, name: int, cat: int, loc: int, interned: pb.InternedData | None
) -> pb.TracePacket:
    p = pb.TracePacket(timestamp=ts, trusted_packet_sequence_id=1, sequence_flags=2)
    te = p.track_event
    te.type = kind  # type: ignore[assignment]
    te.track_uuid = track
    te.name_iid = name
    te.category_iids.append(cat)
    te.source_location_iid = loc
    if interned is not None and interned.ByteSize():
        p.interned_data.CopyFrom(interned)
    return p


def rss_child(n: int) -> None:
    """Encode n thread spans and n async spans from batches made on the fly; print peak RSS (KiB)."""
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.BOTH, time_range=RANGE)
    size = sum(len(c) for c in enc.start())
    for batch in thread_batches(n):
        size += sum(len(c) for c in enc.add_thread_spans("stream-0", batch))
    size += sum(len(c) for c in enc.end_thread("stream-0"))
    for batch in async_batches(n):
        size += sum(len(c) for c in enc.add_async_events(batch))
    size += sum(len(c) for c in enc.finish())
    print(_peak_rss_kib(), size)


def _peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM belongs to the address space, so unlike ru_maxrss it does not
    inherit the parent's peak across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _peak(n: int, flag: str = "--rss") -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_engine", flag, str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--naive-spans", type=int, default=200_000)
    parser.add_argument("--rss", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=(1_000_000, 10_000_000))
    parser.add_argument("--logs", type=int, default=2_000_000)
    parser.add_argument("--measures", type=int, default=5_000_000)
    parser.add_argument("--only-logs", action="store_true", help="only the log entry and measure runs")
    parser.add_argument("--rss-logs", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-logs-sizes", type=int, nargs=2, default=(1_000_000, 10_000_000))
    args = parser.parse_args(argv)
    if args.rss is not None:
        rss_child(args.rss)
        return 0
    if args.rss_logs is not None:
        rss_logs_child(args.rss_logs)
        return 0
    if args.only_logs:
        logs_report(args.logs, args.measures, tuple(args.rss_logs_sizes))
        return 0
    # Memory first, in fresh processes, before this one holds any benchmark input.
    small, large = args.rss_sizes
    peak_small, _ = _peak(small)
    peak_large, _ = _peak(large)
    rows: list[tuple[str, float, float, float]] = []

    def row(label: str, result: tuple[tuple[float, float], int], n: int) -> float:
        (wall, cpu), size = result
        rows.append((label, n / wall, n / cpu, size / n))
        return n / cpu

    for plain in (False, True):
        batches = list(thread_batches(args.spans, plain))
        best = min((encode_threads(batches) for _ in range(3)), key=lambda r: r[0][1])
        rate = row(
            f"thread spans, columnar engine ({'plain utf8' if plain else 'dictionary int32'})",
            best,
            args.spans,
        )
        if not plain:
            engine_rate = rate
    batches = list(thread_batches(args.naive_spans))
    naive_rate = row(
        "thread spans, naive (one pb message per packet)", naive_threads(batches), args.naive_spans
    )
    batches = list(async_batches(args.spans))
    best = min((encode_async(batches) for _ in range(3)), key=lambda r: r[0][1])
    row("async spans (pairing + layout + encoding)", best, args.spans)
    batches = list(async_batches(args.spans, tied=True))
    best = min((encode_async(batches) for _ in range(3)), key=lambda r: r[0][1])
    row("async spans, every 4th beginning with its parent", best, args.spans)
    del batches
    print("| measurement | spans/s (CPU time) | spans/s (wall) | bytes/span |")
    print("|---|---:|---:|---:|")
    for label, wall_rate, cpu_rate, per in rows:
        print(f"| {label} | {cpu_rate:,.0f} | {wall_rate:,.0f} | {per:.1f} |")
    print(f"| columnar / naive (dictionary input, CPU time) | {engine_rate / naive_rate:.1f}x | | |")
    print()
    print("| peak RSS (thread + async spans each) | KiB |")
    print("|---|---:|")
    print(f"| {small:,} spans | {peak_small:,} |")
    print(f"| {large:,} spans | {peak_large:,} |")
    print(f"| ratio | {peak_large / peak_small:.3f} |")
    print()
    logs_report(args.logs, args.measures, tuple(args.rss_logs_sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
