"""Whole traces: header packets, chunking, determinism, tids, span type selection."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import subprocess
import sys

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.request import SpanTypes
from tests.engine.data import PROCESS, RANGE, THREADS, AsyncEvent, Span, async_batch, thread_batch
from tests.engine.decode import decode, packet_sizes
from worker.engine import DEFAULT_CHUNK_SIZE, TraceEncoder, encode
from worker.engine.encoder import EncodeStats
from worker.model import ThreadInfo
from worker.perfetto_pb import pb


def workload(seed: int = 1) -> tuple[list[tuple[str, pa.RecordBatch]], list[pa.RecordBatch]]:
    rng = random.Random(seed)
    thread = []
    for stream in ("stream-a", "stream-b"):
        spans = []
        t = RANGE.begin_ns
        for i in range(300):
            spans.append(Span(t, t + 50, 0, f"root{i % 5}", "app", "a.rs", i % 7))
            spans.append(Span(t + 10, t + 20, 1, f"child{i % 3}", "lib", "b.rs", 3))
            t += 60 + rng.randrange(3)
        thread.append((stream, thread_batch(spans)))
    events = []
    for sid in range(1, 200):
        b = RANGE.begin_ns + rng.randrange(10_000)
        events += [AsyncEvent(b, "begin", sid, sid // 2), AsyncEvent(b + rng.randrange(500), "end", sid)]
    events.sort(key=lambda e: (e.time, e.kind == "end"))
    return thread, [async_batch(events)]


def run(chunk_size: int = DEFAULT_CHUNK_SIZE, span_types: SpanTypes = SpanTypes.BOTH) -> list[bytes]:
    thread, async_ = workload()
    return list(
        encode(
            PROCESS, THREADS, thread, async_, span_types=span_types, time_range=RANGE, chunk_size=chunk_size
        )
    )


def test_first_packet_clears_state_and_declares_the_clock() -> None:
    decoded = decode(b"".join(run()))
    assert decoded.problems == []
    first = decoded.packets[0]
    assert first.sequence_flags == 3 and first.first_packet_on_sequence
    assert first.trusted_packet_sequence_id == 1
    clocks = {c.clock_id: c.timestamp for c in first.clock_snapshot.clocks}
    assert clocks == {pb.BUILTIN_CLOCK_BOOTTIME: RANGE.begin_ns, pb.BUILTIN_CLOCK_REALTIME: RANGE.begin_ns}
    assert first.trace_packet_defaults.timestamp_clock_id == pb.BUILTIN_CLOCK_REALTIME
    for packet in decoded.packets[1:]:
        # Slice events and lane descriptors omit NEEDS_INCREMENTAL_STATE (state is valid from every
        # prefix's first packet; a descriptor uses none).
        lane = packet.HasField("track_descriptor") and packet.track_descriptor.name == "async"
        flags = 0 if packet.HasField("track_event") or lane else 2
        assert packet.trusted_packet_sequence_id == 1 and packet.sequence_flags == flags
        assert not packet.first_packet_on_sequence
    resets = [p for p in decoded.packets if p.HasField("clock_snapshot")][1:]
    assert resets  # every block of events starts with a reset of the incremental clock
    for reset in resets:
        snapshot = [(c.clock_id, c.timestamp, c.is_incremental) for c in reset.clock_snapshot.clocks]
        assert snapshot == [(pb.BUILTIN_CLOCK_BOOTTIME, RANGE.begin_ns, False), (64, RANGE.begin_ns, True)]
        assert reset.trace_packet_defaults.timestamp_clock_id == 64
    process = decoded.packets[1].track_descriptor
    assert process.uuid == 15903503398903116617 and process.process.pid == -1210682551
    assert process.process.process_name == PROCESS.exe
    assert "username=alice" in process.process.process_labels
    threads = [p.track_descriptor for p in decoded.packets[2:4]]
    assert [(t.thread.tid, t.thread.thread_name, t.thread.pid) for t in threads] == [
        (101, "main-101", -1210682551),
        (102, "worker-102", -1210682551),
    ]
    assert all(not t.HasField("parent_uuid") for t in threads)  # thread tracks are root tracks
    group = decoded.packets[4].track_descriptor
    assert (group.name, group.parent_uuid, group.uuid) == ("Async spans", process.uuid, 3169508503178091996)


@pytest.mark.parametrize("chunk_size", [1, 64, 1000, 4096])
def test_chunks_are_whole_packets_and_concatenate_to_the_single_shot_trace(chunk_size: int) -> None:
    whole = b"".join(run())
    chunks = run(chunk_size)
    assert b"".join(chunks) == whole
    largest_packet = max(packet_sizes(whole))
    prefix = b""
    for i, chunk in enumerate(chunks):
        sizes = packet_sizes(chunk)  # asserts the chunk holds whole packets
        pb.Trace.FromString(chunk)  # so every prefix (a concatenation of chunks) parses too
        assert len(chunk) <= max(chunk_size, largest_packet)
        if len(chunk) > chunk_size:
            assert len(sizes) == 1
        prefix += chunk
        if i < 40 or i % 101 == 0:  # a sample of prefixes (decoding all is quadratic)
            problems = decode(prefix).problems  # parses, and interned data / tracks come before use,
            # ... and every clock a prefix uses is declared in it (times resolve, time of day shows)
            assert not [p for p in problems if "before" in p or "undeclared" in p or "clock" in p]


def test_output_is_deterministic() -> None:
    assert run() == run()


def test_stats_count_what_was_written() -> None:
    thread, async_ = workload()
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.BOTH, time_range=RANGE, chunk_size=10_000)
    chunks = enc.start()
    for stream, batch in thread:
        chunks += enc.add_thread_spans(stream, batch) + enc.end_thread(stream)
    for batch in async_:
        chunks += enc.add_async_events(batch)
    chunks += enc.finish()
    data = b"".join(chunks)
    stats = enc.stats
    assert stats.thread_spans == 1200 and stats.async_spans == 199
    assert stats.packets == len(packet_sizes(data)) and stats.bytes == len(data)
    assert stats.chunks == len(chunks)
    with pytest.raises(RuntimeError):
        enc.finish()


@pytest.mark.parametrize("span_types", list(SpanTypes))
def test_span_types_select_tracks_and_slices(span_types: SpanTypes) -> None:
    decoded = decode(b"".join(run(span_types=span_types)))
    assert decoded.problems == []
    kinds = {
        "thread" if d.HasField("thread") else "process" if d.HasField("process") else d.name
        for d in decoded.descriptors.values()
    }
    want = {"process"}
    if span_types.thread:
        want.add("thread")
    if span_types.async_:
        want |= {"Async spans", "async"}
    assert kinds == want
    threads = {d.uuid for d in decoded.descriptors.values() if d.HasField("thread")}
    thread_slices = sum(1 for s in decoded.slices if s.track in threads)
    assert thread_slices == (1200 if span_types.thread else 0)
    assert len(decoded.slices) - thread_slices == (199 if span_types.async_ else 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["", "7", "7", "x", "0", "-3", "99999999999999999999", "8"]), max_size=8))
def test_tids_are_unique_per_stream(ids: list[str]) -> None:
    threads = [ThreadInfo(f"s{i}", "t" if i % 2 else "", tid) for i, tid in enumerate(ids)]
    enc = TraceEncoder(PROCESS, threads, span_types=SpanTypes.THREAD, time_range=RANGE)
    decoded = decode(b"".join(enc.start() + enc.finish()))
    tids = [d.thread.tid for d in decoded.descriptors.values() if d.HasField("thread")]
    assert len(tids) == len(ids) == len(set(tids))
    assert all(0 < tid < 1 << 63 for tid in tids)
    first_valid: set[str] = set()
    for thread, tid in zip(
        threads, [p.track_descriptor.thread.tid for p in decoded.packets[2 : 2 + len(ids)]], strict=True
    ):
        if thread.thread_id in ("7", "8") and thread.thread_id not in first_valid:
            assert tid == int(thread.thread_id)  # the first stream with a valid id keeps it
            first_valid.add(thread.thread_id)
        else:
            assert tid >= 1 << 31  # synthetic
    # Same input, same tids.
    again = TraceEncoder(PROCESS, threads, span_types=SpanTypes.THREAD, time_range=RANGE)
    assert b"".join(again.start() + again.finish()) == b"".join(enc_bytes(threads))


def enc_bytes(threads: list[ThreadInfo]) -> list[bytes]:
    enc = TraceEncoder(PROCESS, threads, span_types=SpanTypes.THREAD, time_range=RANGE)
    return enc.start() + enc.finish()


def test_thread_names_follow_upstream() -> None:
    threads = [
        ThreadInfo("s1", "main", "5"),
        ThreadInfo("s2", "", "6"),
        ThreadInfo("s3", "", ""),
        ThreadInfo("s4", "w", ""),
    ]
    enc = TraceEncoder(PROCESS, threads, span_types=SpanTypes.THREAD, time_range=RANGE)
    decoded = decode(b"".join(enc.start() + enc.finish()))
    names = [p.track_descriptor.thread.thread_name for p in decoded.packets[2:6]]
    assert names == ["main-5", "6", "s3", "w"]


def test_unknown_stream_is_a_programming_error() -> None:
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.THREAD, time_range=RANGE)
    with pytest.raises(ValueError, match="not among the threads"):
        enc.add_thread_spans("nope", thread_batch([Span(1, 2, 0, "a")]))


def test_a_thread_fed_again_after_it_ended_stays_strictly_nested() -> None:
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.THREAD, time_range=RANGE)
    t = RANGE.begin_ns
    first = [Span(t + 100, t + 200, 0, "first"), Span(t + 110, t + 120, 1, "child")]
    chunks = enc.start() + enc.add_thread_spans("stream-a", thread_batch(first))
    chunks += enc.end_thread("stream-a")
    chunks += enc.add_thread_spans("stream-a", thread_batch([Span(t + 150, t + 300, 0, "again")]))
    decoded = decode(b"".join(chunks + enc.finish()))
    assert decoded.problems == []
    got = sorted((s.begin - t, s.end - t, s.name) for s in decoded.slices)
    assert got == [(100, 200, "first"), (110, 120, "child"), (200, 300, "again")]


def test_output_does_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "import hashlib; from tests.engine.test_encoder import run; "
        "print(hashlib.sha256(b''.join(run())).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert digests == {hashlib.sha256(b"".join(run())).hexdigest()}


def test_large_batches_are_encoded_in_sub_batches_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = b"".join(run())
    threads_only = b"".join(run(span_types=SpanTypes.THREAD))
    monkeypatch.setattr("worker.engine.encoder._SUB_BATCH", 7)
    # Thread events are the same bytes; async blocks are ordered per sub-batch, same slices.
    assert b"".join(run(span_types=SpanTypes.THREAD)) == threads_only
    split_up = decode(b"".join(run()))
    assert split_up.problems == []
    assert split_up.slices == decode(whole).slices


def test_flush_cuts_a_chunk_early_without_changing_the_bytes() -> None:
    thread, async_ = workload()
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.BOTH, time_range=RANGE)
    header = enc.start() + enc.flush()
    assert len(header) == 1 and enc.flush() == []
    pb.Trace.FromString(header[0])
    rest: list[bytes] = []
    for stream, batch in thread:
        rest += enc.add_thread_spans(stream, batch) + enc.end_thread(stream)
    rest += enc.add_async_events(async_[0]) + enc.finish()
    assert b"".join(header + rest) == b"".join(run())


_GROUP_THREADS = [ThreadInfo(f"stream-{c}", f"t{c}", str(200 + i)) for i, c in enumerate("abcd")]


def _random_thread(rng: random.Random, rows: int) -> list[Span]:
    """Spans of one thread: mostly nested, with ties, clipped ones and some bad nesting."""
    spans = []
    t = RANGE.begin_ns - rng.choice([0, 0, 500])
    depth = 0
    for _ in range(rows):
        depth = max(0, min(depth + rng.choice([-2, -1, 0, 1, 1]), 6))
        length = rng.choice([0, 5, 40, 400, 10**7 if rng.random() < 0.05 else 30])
        spans.append(
            Span(
                t,
                t + length if rng.random() > 0.03 else t - 3,
                depth if rng.random() > 0.03 else depth + 3,
                rng.choice([f"fn{rng.randrange(40)}", "", "ünï"]),
                rng.choice(["app", "lib", ""]),
                rng.choice(["a.rs", "b.rs", "c/d.rs"]),
                rng.choice([0, 1, 127, 128, 300, 1 << 30]),
            )
        )
        t += rng.choice([0, 0, 1, 7, 100])
    return spans


@pytest.mark.parametrize("seed", range(40))
def test_threads_taken_together_give_the_bytes_of_thread_after_thread(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    if seed % 4 == 0:  # some threads too large to group: mixed with grouped ones
        monkeypatch.setattr("worker.engine.encoder.CANONICAL_ROWS", 40)
    threads: list[tuple[str, list[pa.RecordBatch]]] = []
    # Mostly one encoding for all (threads read and ordered in one pass), else mixed ones.
    encodings = ["dict32", "dict8", "plain", "large"] if seed % 3 == 0 else [rng.choice(["dict32", "plain"])]
    for _ in range(rng.randint(1, 6)):
        sid = rng.choice(_GROUP_THREADS).stream_id  # (a stream may come twice: fed again)
        spans = _random_thread(rng, rng.choice([0, 1, 3, 30, 120]))
        encoding = rng.choice(encodings)
        cuts = sorted(rng.sample(range(len(spans) + 1), min(len(spans) + 1, rng.randint(1, 3))))
        bounds = [0, *cuts, len(spans)]
        batches = [thread_batch(spans[a:b], encoding) for a, b in itertools.pairwise(bounds) if b > a]
        threads.append((sid, batches))

    def sequential() -> tuple[bytes, EncodeStats]:
        enc = TraceEncoder(PROCESS, _GROUP_THREADS, span_types=SpanTypes.BOTH, time_range=RANGE)
        out = enc.start()
        for sid, batches in threads:
            for batch in batches:
                out += enc.add_thread_spans(sid, batch)
            out += enc.end_thread(sid)
        out += enc.finish()
        return b"".join(out), enc.stats

    def together() -> tuple[bytes, EncodeStats]:
        enc = TraceEncoder(PROCESS, _GROUP_THREADS, span_types=SpanTypes.BOTH, time_range=RANGE)
        out = enc.start()
        split = rng.randint(0, len(threads))
        out += enc.add_threads(threads[:split]) + enc.add_threads(threads[split:])
        out += enc.finish()
        return b"".join(out), enc.stats

    want, want_stats = sequential()
    got, got_stats = together()
    assert got == want
    assert got_stats == want_stats
    assert decode(got).problems == []
