"""Thread spans: every span once, exact, strictly nested, whatever the batch boundaries."""

from __future__ import annotations

import io
from collections.abc import Sequence

import pyarrow as pa
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.request import SpanTypes
from tests.engine.data import PROCESS, THREADS, Span, split, thread_batch
from tests.engine.decode import Slice, decode
from tests.engine.perfetto_import import import_trace
from worker.engine import TraceEncoder, encode
from worker.engine.tracks import depth_track_uuid
from worker.errors import BadSourceData
from worker.inspect import inspect_trace
from worker.model import TimeRange

#: Wide enough that no span here is clipped (clipping has tests of its own).
RANGE = TimeRange(0, 1 << 62)
UUID_A = xxhash.xxh64_intdigest(b"stream-a")
UUID_B = xxhash.xxh64_intdigest(b"stream-b")


def run(batches: Sequence[tuple[str, pa.RecordBatch]], chunk_size: int = 1 << 20) -> bytes:
    chunks = encode(
        PROCESS, THREADS, batches, [], span_types=SpanTypes.THREAD, time_range=RANGE, chunk_size=chunk_size
    )
    return b"".join(chunks)


def expected(spans: Sequence[Span], track: int) -> list[Slice]:
    return sorted(Slice(track, s.begin, s.end, s.name, s.target, s.filename, s.line) for s in spans)


def check_import(data: bytes, spans: int) -> None:
    """As Perfetto's importer reads it (tests/engine/perfetto_import.py): no stat (so no track ever
    holds 512 open slices: slice_max_depth_exceeded), every span one slice, every slice closed."""
    imported = import_trace(data)
    assert not imported.stats
    assert len(imported.slices) == spans
    assert all(s.end is not None for s in imported.slices)


@st.composite
def call_trees(draw: st.DrawFn) -> list[Span]:
    """Random well-nested call trees in preorder: equal timestamps and zero-length spans are common."""
    spans: list[Span] = []
    base = draw(st.integers(0, 2))
    names = st.sampled_from(["a", "b", "c", "d"])

    def children(lo: int, hi: int, depth: int) -> None:
        t = lo
        for _ in range(draw(st.integers(0, 3 if depth < 6 else 0))):
            if len(spans) >= 40 or t > hi:
                return
            b = min(hi, t + draw(st.integers(0, 2)))
            e = min(hi, b + draw(st.integers(0, 6)))
            spans.append(
                Span(
                    b,
                    e,
                    base + depth,
                    draw(names),
                    draw(st.sampled_from(["x", "y"])),
                    draw(st.sampled_from(["f.rs", "g.rs"])),
                    draw(st.integers(0, 3)),
                )
            )
            children(b, e, depth + 1)
            t = e

    children(draw(st.integers(0, 5)), 60, 0)
    return spans


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spans=call_trees(),
    cuts=st.lists(st.integers(0, 40), max_size=6),
    encoding=st.sampled_from(["plain", "dict16", "dict32"]),
)
def test_random_call_trees_round_trip(spans: list[Span], cuts: list[int], encoding: str) -> None:
    batch = thread_batch(spans, encoding)
    data = run([("stream-a", b) for b in split(batch, cuts)])
    decoded = decode(data)
    assert decoded.problems == []
    assert decoded.on_track(UUID_A) == expected(spans, UUID_A)
    assert inspect_trace(io.BytesIO(data)).ok
    check_import(data, len(spans))
    # Every file position keeps timestamps non-decreasing on the track (what Perfetto's sort needs).
    ts = decoded.event_times()
    assert ts == sorted(ts)
    # Chunking never changes the bytes, only where they are cut.
    assert run([("stream-a", b) for b in split(batch, cuts)], chunk_size=97) == data


def test_equal_timestamps_end_before_begin_and_zero_length_nesting() -> None:
    spans = [
        Span(10, 30, 0, "root"),
        Span(10, 20, 1, "first"),
        Span(20, 20, 1, "zero"),
        Span(20, 20, 2, "zero-child"),
        Span(20, 30, 1, "second"),
        Span(30, 30, 0, "next-root"),
    ]
    decoded = decode(run([("stream-a", thread_batch(spans))]))
    assert decoded.problems == []
    assert decoded.on_track(UUID_A) == expected(spans, UUID_A)
    order = decoded.events_on(UUID_A)
    b, e = 1, 2
    # Rows tied on begin = 20 are taken shallower first, then shorter first (the order must not depend
    # on how the server orders ties): zero, second, then zero-child, which nests in second.
    assert order == [
        (b, 10), (b, 10), (e, 20), (b, 20), (e, 20), (b, 20), (b, 20),
        (e, 20), (e, 30), (e, 30), (b, 30), (e, 30),
    ]  # fmt: skip


def test_two_threads_each_on_their_track_and_a_thread_without_spans() -> None:
    a = [Span(100, 200, 1, "a-root"), Span(110, 120, 2, "a-child")]
    b = [Span(150, 160, 1, "b-root")]
    decoded = decode(run([("stream-a", thread_batch(a)), ("stream-b", thread_batch(b))]))
    assert decoded.problems == []
    assert decoded.on_track(UUID_A) == expected(a, UUID_A)
    assert decoded.on_track(UUID_B) == expected(b, UUID_B)
    empty = decode(run([("stream-a", thread_batch(a)), ("stream-b", thread_batch([]))]))
    assert empty.on_track(UUID_B) == []
    assert empty.problems == []


def test_encodings_and_time_types_give_identical_bytes() -> None:
    spans = [Span(10, 50, 0, "r", "t1", "f1"), Span(12, 20, 1, "c", "t2", "f2", 9), Span(30, 40, 1, "r")]
    outputs = {
        run([("stream-a", thread_batch(spans, enc, times))])
        for enc in ("plain", "large", "dict8", "dict16", "dict32", "dict64")
        for times in ("timestamp", "int64")
    }
    assert len(outputs) == 1


def test_bad_rows_are_clamped_into_strictly_nested_slices() -> None:
    spans = [
        Span(100, 200, 0, "root"),
        Span(150, 260, 1, "ends-after-parent"),
        Span(210, 220, 1, "starts-after-parent"),
        Span(300, 250, 0, "ends-before-begin"),
        Span(-5, 10, 0, "negative-and-out-of-order"),
        Span(400, 500, 5, "depth-jump"),
        Span(410, 420, 0, "shallower-than-first"),
    ]
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.THREAD, time_range=RANGE)
    data = b"".join(enc.start() + enc.add_thread_spans("stream-a", thread_batch(spans)) + enc.finish())
    decoded = decode(data)
    assert decoded.problems == []
    got = decoded.on_track(UUID_A)
    assert len(got) == len(spans)
    assert sorted(s.name for s in got) == sorted(s.name for s in spans)
    by_name = {s.name: s for s in got}
    assert (by_name["root"].begin, by_name["root"].end) == (100, 200)
    assert (by_name["ends-after-parent"].begin, by_name["ends-after-parent"].end) == (150, 200)
    assert by_name["ends-before-begin"].end == by_name["ends-before-begin"].begin == 300
    assert by_name["negative-and-out-of-order"].begin >= 300
    assert by_name["starts-after-parent"].begin == by_name["starts-after-parent"].end == 200
    # Depth 5 right after a root is read as its child (one level down), so it is clamped into it.
    assert (by_name["depth-jump"].begin, by_name["depth-jump"].end) == (300, 300)
    assert (by_name["shallower-than-first"].begin, by_name["shallower-than-first"].end) == (410, 420)
    assert enc.stats.clamped_spans == 5
    assert enc.stats.thread_spans == len(spans)


def test_missing_column_and_wrong_type_raise_bad_source_data() -> None:
    batch = thread_batch([Span(1, 2, 0, "a")])
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.THREAD, time_range=RANGE)
    with pytest.raises(BadSourceData, match="'depth'"):
        enc.add_thread_spans("stream-a", batch.drop_columns(["depth"]))
    wrong = batch.set_column(batch.schema.get_field_index("name"), "name", pa.array([1], pa.int32()))
    with pytest.raises(BadSourceData, match="'name' must be strings"):
        enc.add_thread_spans("stream-a", wrong)
    floats = batch.set_column(batch.schema.get_field_index("begin"), "begin", pa.array([1.0]))
    with pytest.raises(BadSourceData, match="'begin' must be a timestamp"):
        enc.add_thread_spans("stream-a", floats)


def test_nulls_in_strings_and_lines() -> None:
    batch = pa.record_batch(
        {
            "begin": pa.array([1, 5], pa.int64()),
            "end": pa.array([10, 6], pa.int64()),
            "name": pa.array([None, "n"]),
            "target": pa.array(["t", None]),
            "filename": pa.array([None, None], pa.string()),
            "line": pa.array([None, 3], pa.uint32()),
            "depth": pa.array([0, 1], pa.uint32()),
        }
    )
    decoded = decode(run([("stream-a", batch)]))
    assert decoded.problems == []
    assert decoded.on_track(UUID_A) == [
        Slice(UUID_A, 1, 10, "", "t", "", 0),
        Slice(UUID_A, 5, 6, "n", "", "", 3),
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(st.integers(-5, 40), st.integers(-5, 40), st.integers(0, 6)), min_size=1, max_size=40
    ),
    cuts=st.lists(st.integers(0, 40), max_size=5),
)
def test_arbitrary_bad_rows_still_give_strictly_nested_slices(
    rows: list[tuple[int, int, int]], cuts: list[int]
) -> None:
    spans = [Span(b, e, d, f"s{i}") for i, (b, e, d) in enumerate(rows)]
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.THREAD, time_range=RANGE)
    chunks = enc.start()
    for batch in split(thread_batch(spans), cuts):
        chunks += enc.add_thread_spans("stream-a", batch)
    data = b"".join(chunks + enc.finish())
    decoded = decode(data)
    assert decoded.problems == []
    assert inspect_trace(io.BytesIO(data)).ok
    check_import(data, len(spans))
    got = decoded.on_track(UUID_A)
    assert sorted(s.name for s in got) == sorted(s.name for s in spans)  # each span exactly once
    assert all(0 <= s.begin <= s.end for s in got)
    # Begins before the range are clipped to it (marked cut), not clamped.
    clipped = [(max(b, RANGE.begin_ns), e) for b, e, _ in rows]
    well_formed = [s for s in got if (s.begin, s.end) == clipped[int(s.name[1:])]]
    assert enc.stats.clamped_spans == len(spans) - len(well_formed)


def test_dictionaries_with_duplicates_nulls_and_changes_between_batches() -> None:
    def batch(dictionary: list[str | None], indices: list[int | None], t0: int) -> pa.RecordBatch:
        names = pa.DictionaryArray.from_arrays(
            pa.array(indices, pa.int16()), pa.array(dictionary, pa.string())
        )
        n = len(indices)
        return pa.record_batch(
            {
                "begin": pa.array([t0 + 10 * i for i in range(n)], pa.int64()),
                "end": pa.array([t0 + 10 * i + 5 for i in range(n)], pa.int64()),
                "name": names,
                "target": names,
                "filename": names,
                "line": pa.array([1] * n, pa.uint32()),
                "depth": pa.array([0] * n, pa.uint32()),
            }
        )

    batches = [
        batch(["x", "y", "x", None], [2, 0, 1, 3, None], 0),
        batch(["x", "y", "x", None], [1, 1, 3], 100),  # same dictionary again (cached ids)
        batch(["z", "y"], [0, 1, None], 200),  # a different one
    ]
    decoded = decode(run([("stream-a", b) for b in batches]))
    assert decoded.problems == []
    got = [(s.begin, s.name, s.category, s.file) for s in decoded.on_track(UUID_A)]
    names = ["x", "x", "y", "", "", "y", "y", "", "z", "y", ""]
    begins = [0, 10, 20, 30, 40, 100, 110, 120, 200, 210, 220]
    assert got == [(b, n, n, n) for b, n in zip(begins, names, strict=True)]
    interned = [n for p in decoded.packets for n in p.interned_data.event_names]
    assert [n.name for n in interned] == ["x", "y", "", "z"]  # each string once, first-appearance order


def recursion(t0: int, frames: int, prefix: str) -> list[Span]:
    """``frames`` nested calls (preorder) from ``t0``, with zero-length leaves beside some deep frames
    (before the next call and after it returns) and a run of frames ending together (tied ENDs)."""
    spans: list[Span] = []
    span = 10 * frames
    for i in range(frames):
        end = t0 + span - 2 * i if not 600 <= i < 700 else t0 + span - 1200
        spans.append(Span(t0 + 2 * i, end, i, f"{prefix}{i}"))
        if i in (510, 511, 512, 1023, 1024, frames - 1):
            spans.append(Span(t0 + 2 * i + 1, t0 + 2 * i + 1, i + 1, f"{prefix}leaf{i}"))
    # Leaves after the deeper call returned, each right after its parent's subtree (preorder).
    for i in (1024, 700, 512, 511):
        if i < frames - 1:
            at = next(k for k, x in enumerate(spans) if x.name == f"{prefix}{i}")
            parent = spans[at]
            at += 1
            while at < len(spans) and spans[at].depth > parent.depth:
                at += 1
            spans.insert(at, Span(parent.end - 1, parent.end - 1, i + 1, f"{prefix}after{i}"))
    return spans


def deep_track(thread: int, depth: int) -> int:
    """The track a span at ``depth`` (levels below the thread's first span) is drawn on."""
    return thread if depth < 512 else depth_track_uuid(thread, depth // 512)


@pytest.mark.parametrize("sub_batch", [1 << 16, 300, 7])
def test_deep_recursion_goes_on_depth_band_tracks_exactly(
    monkeypatch: pytest.MonkeyPatch, sub_batch: int
) -> None:
    # Perfetto drops a slice begun on a track holding 512 open ones; deeper spans go on one overflow
    # track per band of 512 levels under the thread's track, each nested 0-511 deep and exact.
    monkeypatch.setattr("worker.engine.encoder._SUB_BATCH", sub_batch)
    first = [*recursion(1_000, 1_300, "a"), Span(20_000, 20_010, 0, "flat")]
    again = recursion(30_000, 600, "again")  # after thread b: thread a reopened, its tracks reused
    a = first + again
    b = recursion(50_000, 520, "b")
    data = run(
        [("stream-a", x) for x in split(thread_batch(first), [5, 700, 1_290])]
        + [("stream-b", thread_batch(b)), ("stream-a", thread_batch(again))]
    )
    decoded = decode(data)
    assert decoded.problems == []  # decode also reports any BEGIN on a track with 512 open
    for uuid, spans in ((UUID_A, a), (UUID_B, b)):
        bands = {s.depth // 512 for s in spans}
        for band in bands:
            track = deep_track(uuid, 512 * band)
            assert decoded.on_track(track) == expected([s for s in spans if s.depth // 512 == band], track)
    assert len(decoded.slices) == len(a) + len(b)
    # The overflow tracks: under their thread's track, named by band, declared once before their events.
    band_tracks = {
        deep_track(UUID_A, 512): "main-101 depth 512-1023",
        deep_track(UUID_A, 1024): "main-101 depth 1024-1535",
        deep_track(UUID_B, 512): "worker-102 depth 512-1023",
    }
    for uuid, name in band_tracks.items():
        desc = decoded.descriptors[uuid]
        assert (desc.name, desc.parent_uuid) == (name, UUID_A if name.startswith("main") else UUID_B)
        declared = [i for i, p in enumerate(decoded.packets) if p.track_descriptor.uuid == uuid]
        assert len(declared) == 1 and declared[0] < decoded.tracks.index(uuid)
    assert len(decoded.descriptors) == 1 + 2 + len(band_tracks)  # process, threads, bands
    assert inspect_trace(io.BytesIO(data)).ok
    check_import(data, len(a) + len(b))


def test_deep_recursion_prefixes_load_and_cut_and_bad_rows_stay_nested() -> None:
    spans = recursion(1_000, 1_300, "a")
    # Children ending after their parent (clamped) and a range cutting both ends (marked): the
    # block layouts with cut annotations and the repair path, on the overflow tracks too.
    bad = [Span(s.begin, s.end + 3 if s.depth % 97 == 5 else s.end, s.depth, s.name) for s in spans]
    clip = TimeRange(2_100, 12_500)  # cuts the begins of levels < 550, the ends of levels < 750
    chunks = list(
        encode(
            PROCESS, THREADS, [("stream-a", thread_batch(bad))], [], span_types=SpanTypes.THREAD,
            time_range=clip, chunk_size=4_096,
        )
    )  # fmt: skip
    data = b"".join(chunks)
    decoded = decode(data)
    assert decoded.problems == []
    assert sorted(s.name for s in decoded.slices) == sorted(s.name for s in spans)
    assert {s.cut for s in decoded.slices if s.track == deep_track(UUID_A, 512)} >= {"begin", "both", "end"}
    assert inspect_trace(io.BytesIO(data)).ok
    check_import(data, len(spans))
    # Every prefix of the chunks loads: no event before its track's descriptor, none dropped for depth.
    assert len(chunks) > 10
    for k in range(1, len(chunks)):
        stats = import_trace(b"".join(chunks[:k])).stats
        assert set(stats) <= {"unfinished_slices"}, stats
