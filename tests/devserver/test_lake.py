"""The synthetic lake itself: determinism, exact counts, structure, range semantics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from worker.devserver import Lake, LakeConfig, LakeProcess, async_events, log_entries, thread_spans
from worker.devserver import threads as threads_module
from worker.devserver.schemas import SchemaOptions


def _table(batches: object, schema: pa.Schema | None = None) -> pa.Table:
    return pa.Table.from_batches(list(batches), schema)  # type: ignore[call-overload]


def _ns(table: pa.Table, column: str) -> np.ndarray:
    values: np.ndarray = table.column(column).cast(pa.int64()).to_numpy()
    return values


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    config = LakeConfig(seed=7, processes=("small",))
    a, b = Lake(config), Lake(config)
    pa_, pb = a.processes[0], b.processes[0]
    assert pa_.process_id == pb.process_id
    stream = pa_.thread_streams[2].stream_id
    assert _table(thread_spans(a, stream)).equals(_table(thread_spans(b, stream)))
    assert _table(async_events(a, pa_.process_id)).equals(_table(async_events(b, pb.process_id)))
    assert _table(log_entries(a, pa_.process_id)).equals(_table(log_entries(b, pb.process_id)))
    other = Lake(LakeConfig(seed=8, processes=("small",))).processes[0]
    assert other.process_id != pa_.process_id


def test_expected_counts_equal_generated_rows(lake: Lake) -> None:
    for process in lake.processes:
        spans = sum(b.num_rows for s in process.thread_streams for b in thread_spans(lake, s.stream_id))
        assert spans == process.thread_span_count
        events = _table(async_events(lake, process.process_id))
        begins = pa.compute.sum(pa.compute.equal(events.column("event_type"), "begin")).as_py()
        assert begins == process.async_span_count
        assert sum(b.num_rows for b in log_entries(lake, process.process_id)) == process.log_entry_count


def test_default_lake_sizes_without_generating() -> None:
    lake = Lake()
    counts = {p.kind: p.thread_span_count for p in lake.processes}
    assert 9_000 <= counts["small"] <= 12_000
    assert 180_000 <= counts["typical"] <= 220_000
    assert counts["large"] >= 5_000_000
    huge = Lake(LakeConfig(processes=("large",), large_spans=20_000_000)).processes[0]
    assert huge.thread_span_count >= 20_000_000
    assert huge.async_span_count == 1_000_000


def test_call_trees_nest_in_preorder(process: LakeProcess, lake: Lake) -> None:
    deepest = 0
    for stream in process.thread_streams:
        t = _table(thread_spans(lake, stream.stream_id))
        begin, end = _ns(t, "begin"), _ns(t, "end")
        ids, parents = t.column("id").to_numpy(), t.column("parent").to_numpy()
        depth = t.column("depth").to_numpy().astype(np.int64)
        assert (np.diff(begin) >= 0).all()  # preorder = ascending begin
        assert (end >= begin).all()
        assert (t.column("duration").to_numpy() == end - begin).all()
        roots = depth == 0
        assert (ids[roots] == -1).all() and roots[0]  # a synthetic root opens every tree
        assert set(t.column("name").to_numpy(zero_copy_only=False)[roots]) == {
            stream.thread_name or f"thread-{stream.thread_id or stream.index}"
        }
        # Every real span lies within its parent, one level deeper.
        real = ~roots
        index = {int(i): k for k, i in enumerate(ids) if i >= 0}
        has_parent = real & (parents >= 0)
        p = np.array([index[int(x)] for x in parents[has_parent]])
        assert (begin[p] <= begin[has_parent]).all() and (end[p] >= end[has_parent]).all()
        assert (depth[p] + 1 == depth[has_parent]).all()
        assert (depth[real & (parents < 0)] == 1).all()
        deepest = max(deepest, int(depth.max()))
    assert deepest >= 8
    assert len(process.span_names) >= 1000


def test_async_spans_nest_cross_streams_and_stay_open(process: LakeProcess, lake: Lake) -> None:
    events = _table(async_events(lake, process.process_id, SchemaOptions(dictionary_keys="plain")))
    kind = events.column("event_type").to_numpy(zero_copy_only=False)
    span = events.column("span_id").to_numpy()
    stream = events.column("stream_id").to_numpy(zero_copy_only=False)
    time = _ns(events, "time")
    assert (np.diff(time) >= 0).all()  # served in time order, across blocks too
    begins = {
        int(s): (int(t), st)
        for s, t, st in zip(
            span[kind == "begin"], time[kind == "begin"], stream[kind == "begin"], strict=True
        )
    }
    ends = {
        int(s): (int(t), st)
        for s, t, st in zip(span[kind == "end"], time[kind == "end"], stream[kind == "end"], strict=True)
    }
    assert set(ends) < set(begins)  # some spans are still open at the end of the data
    assert all(ends[s][0] > begins[s][0] for s in ends)
    assert any(ends[s][1] != begins[s][1] for s in ends)  # begin and end on different streams
    parents = events.column("parent_span_id").to_numpy()[kind == "begin"]
    assert set(parents[parents != 0].tolist()) <= set(begins)
    assert events.column("depth").to_numpy().max() == 2
    # Real concurrency: at some instant, many spans are open at once.
    opened = np.sort(np.array([begins[s][0] for s in ends]))
    closed = np.sort(np.array([ends[s][0] for s in ends]))
    at = opened[len(opened) // 2]
    assert np.searchsorted(opened, at, "right") - np.searchsorted(closed, at, "right") >= 10


def test_range_filters_are_exact_overlap_and_time_in(process: LakeProcess, lake: Lake) -> None:
    stream = process.thread_streams[0].stream_id
    full = _table(thread_spans(lake, stream))
    b, e = _ns(full, "begin"), _ns(full, "end")
    lo = process.begin_ns + (process.end_ns - process.begin_ns) // 3
    hi = lo + (process.end_ns - process.begin_ns) // 5
    cut = _table(thread_spans(lake, stream, None, lo, hi), full.schema)
    assert cut.equals(full.filter(pa.array((b <= hi) & (e >= lo))))
    assert 0 < cut.num_rows < full.num_rows
    events = _table(async_events(lake, process.process_id))
    t = _ns(events, "time")
    cut_events = _table(async_events(lake, process.process_id, None, lo, hi), events.schema)
    assert cut_events.equals(events.filter(pa.array((t >= lo) & (t <= hi))))


def test_ranges_skip_blocks_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    lake = Lake(LakeConfig(processes=("typical",), block_rows=4096))
    process = lake.processes[0]
    stream = process.thread_streams[0]
    assert stream.plan is not None and stream.plan.block_count > 4
    generated: list[int] = []
    real = threads_module.generate_block

    def counting(*args: Any) -> Any:
        generated.append(1)
        return real(*args)

    monkeypatch.setattr(threads_module, "generate_block", counting)
    begin, _ = stream.plan.block_bounds(2)
    rows = sum(b.num_rows for b in thread_spans(lake, stream.stream_id, None, begin, begin + 1))
    assert rows >= 1
    assert len(generated) <= 2


def test_schema_options(process: LakeProcess, lake: Lake) -> None:
    old = SchemaOptions(dictionary_keys="int16", async_hash=False)
    events = next(async_events(lake, process.process_id, old))
    assert "hash" not in events.schema.names
    assert events.schema.field("name").type == pa.dictionary(pa.int16(), pa.utf8())
    plain = next(
        thread_spans(lake, process.thread_streams[0].stream_id, SchemaOptions(dictionary_keys="plain"))
    )
    assert plain.schema.field("name").type == pa.utf8()


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown process kinds"):
        LakeConfig(processes=("tiny",))
    with pytest.raises(ValueError, match="scale"):
        LakeConfig(scale=0)


def test_async_events_are_time_ordered_across_many_blocks() -> None:
    lake = Lake(LakeConfig(processes=("typical",), async_block_spans=1000))
    process = lake.processes[0]
    assert process.async_plan.block_count >= 10
    events = _table(async_events(lake, process.process_id))
    time = _ns(events, "time")
    assert (np.diff(time) >= 0).all()
    kinds = events.column("event_type").to_numpy(zero_copy_only=False)
    assert int((kinds == "begin").sum()) == process.async_span_count
    span = events.column("span_id").to_numpy()
    assert len(np.unique(span[kinds == "begin"])) == process.async_span_count
    assert len(np.unique(span[kinds == "end"])) == int((kinds == "end").sum())
