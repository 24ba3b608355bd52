"""Arrow record batches of the views, block by block, filtered to a time range.

Each function yields the rows the server holds for one ``view_instance`` call: ``thread_spans``
rows overlapping ``[begin_ns, end_ns]`` (``begin <= end_ns AND end >= begin_ns``, spans not
clipped), ``async_events``, ``log_entries`` and ``measures`` rows with ``time`` in
``[begin_ns, end_ns]``. Blocks entirely outside the range are skipped without being generated.
Tests use the same functions as the ground truth of what the server serves.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from worker.devserver import asyncgen, logs, metrics, threads
from worker.devserver.lake import Lake, LakeProcess, properties_json
from worker.devserver.schemas import (
    TS,
    SchemaOptions,
    async_events_schema,
    log_entries_schema,
    measures_schema,
    thread_spans_schema,
)

__all__ = ["async_events", "log_entries", "measures", "thread_spans"]

_ALL = (-(2**63), 2**63 - 1)


def _strings(indices: np.ndarray, values: pa.Array, options: SchemaOptions) -> pa.Array:
    """A string column as the view's type: dictionary (int32 / int16 keys) or plain utf8."""
    if options.dictionary_keys == "plain":
        return values.take(pa.array(indices))
    key = np.int32 if options.dictionary_keys == "int32" else np.int16
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(key)), values)


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int64()).cast(TS)


def _range(begin_ns: int | None, end_ns: int | None) -> tuple[int, int]:
    return (_ALL[0] if begin_ns is None else begin_ns, _ALL[1] if end_ns is None else end_ns)


def thread_spans(
    lake: Lake,
    stream_id: str,
    options: SchemaOptions | None = None,
    begin_ns: int | None = None,
    end_ns: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Rows of ``view_instance('thread_spans', stream_id)`` overlapping the range, in begin order."""
    options = options or SchemaOptions()
    schema = thread_spans_schema(options)
    found = lake.stream(stream_id)
    if found is None or found[1].plan is None:
        return
    process, stream = found
    plan = stream.plan
    assert plan is not None
    lo, hi = _range(begin_ns, end_ns)
    names = process.span_names
    for block in range(plan.block_count):
        b_begin, b_end = plan.block_bounds(block)
        if b_end < lo or b_begin > hi:
            continue
        rng = np.random.default_rng([lake.config.seed, process.index, 2, stream.index, block])
        rows = threads.generate_block(rng, plan, block, names, stream.root_name_index)
        keep = (rows.end >= lo) & (rows.begin <= hi)
        if not keep.any():
            continue
        ni = rows.name_index[keep]
        begin, end = rows.begin[keep], rows.end[keep]
        yield pa.record_batch(
            [
                pa.array(rows.id[keep], pa.int64()),
                pa.array(rows.parent[keep], pa.int64()),
                pa.array(rows.depth[keep].astype(np.uint32), pa.uint32()),
                pa.array(names.hashes[ni], pa.uint32()),
                _ts(begin),
                _ts(end),
                pa.array(end - begin, pa.int64()),
                _strings(ni, names.names, options),
                _strings(names.target_index[ni], names.targets, options),
                _strings(names.filename_index[ni], names.filenames, options),
                pa.array(names.lines[ni], pa.uint32()),
            ],
            schema=schema,
        )


def async_events(
    lake: Lake,
    process_id: str,
    options: SchemaOptions | None = None,
    begin_ns: int | None = None,
    end_ns: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Rows of ``view_instance('async_events', process_id)`` with ``time`` in the range, in time order."""
    options = options or SchemaOptions()
    schema = async_events_schema(options)
    process = lake.process(process_id)
    if process is None:
        return
    plan = process.async_plan
    lo, hi = _range(begin_ns, end_ns)
    cpu = process.thread_streams
    stream_ids = pa.array([s.stream_id for s in cpu], pa.utf8())
    event_types = pa.array(["begin", "end"], pa.utf8())
    names = process.async_names
    generated: dict[int, asyncgen.AsyncBlock] = {}
    last = plan.block_count - 1
    for block in range(plan.block_count):
        # Served block ``block`` = events with time in its window (the last one is open-ended).
        w_begin, w_end = plan.block_window(block)
        if w_begin > hi:
            break
        if w_end <= lo and block < last:
            continue
        for old in [k for k in generated if k < block - asyncgen.MAX_WINDOWS - 1]:
            del generated[old]
        sources = []
        for source in range(max(0, block - asyncgen.MAX_WINDOWS - 1), block + 1):
            if source not in generated:
                rng = np.random.default_rng([lake.config.seed, process.index, 3, source])
                generated[source] = asyncgen.generate_block(rng, plan, source, len(cpu), len(names))
            sources.append(generated[source])
        ev = asyncgen.select_window(sources, w_begin if block else None, w_end if block < last else None)
        keep = (ev.time >= lo) & (ev.time <= hi)
        if not keep.any():
            continue
        si = ev.stream_index[keep]
        ni = ev.name_index[keep]
        block_ids = pa.array([_async_block_id(lake, process, block, s.stream_id) for s in cpu], pa.utf8())
        columns = [
            _strings(si, stream_ids, options),
            _strings(si, block_ids, options),
            _ts(ev.time[keep]),
            _strings(np.where(ev.is_begin[keep], 0, 1), event_types, options),
            pa.array(ev.span_id[keep], pa.int64()),
            pa.array(ev.parent_span_id[keep], pa.int64()),
            pa.array(ev.depth[keep].astype(np.uint32), pa.uint32()),
        ]
        if options.async_hash:
            columns.append(pa.array(names.hashes[ni], pa.uint32()))
        columns += [
            _strings(ni, names.names, options),
            _strings(names.filename_index[ni], names.filenames, options),
            _strings(names.target_index[ni], names.targets, options),
            pa.array(names.lines[ni], pa.uint32()),
        ]
        yield pa.record_batch(columns, schema=schema)


def _async_block_id(lake: Lake, process: LakeProcess, block: int, stream_id: str) -> str:
    stream = lake.stream(stream_id)
    assert stream is not None
    return stream[1].block_id(lake.config.seed, 1_000_000 + block)


def log_entries(
    lake: Lake,
    process_id: str,
    options: SchemaOptions | None = None,
    begin_ns: int | None = None,
    end_ns: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Rows of ``view_instance('log_entries', process_id)`` with ``time`` in the range."""
    options = options or SchemaOptions()
    schema = log_entries_schema(options)
    process = lake.process(process_id)
    if process is None:
        return
    plan = process.log_plan
    lo, hi = _range(begin_ns, end_ns)
    targets = process.span_names.targets
    for block in range(plan.block_count):
        w_begin, w_end = plan.block_window(block)
        if w_end < lo or w_begin > hi:
            continue
        rng = np.random.default_rng([lake.config.seed, process.index, 4, block])
        entries = logs.generate_block(rng, plan, block, len(targets))
        keep = (entries.time >= lo) & (entries.time <= hi)
        n = int(keep.sum())
        if n == 0:
            continue
        zeros = np.zeros(n, dtype=np.int32)
        block_id = lake.stream(process.log_stream_id)
        assert block_id is not None
        consts = {
            "process_id": process.process_id,
            "stream_id": process.log_stream_id,
            "block_id": block_id[1].block_id(lake.config.seed, block),
            "exe": process.exe,
            "username": process.username,
            "computer": process.computer,
        }

        def const(key: str, zeros: np.ndarray = zeros, consts: dict[str, str] = consts) -> pa.Array:
            return _strings(zeros, pa.array([consts[key]], pa.utf8()), options)

        props = pa.DictionaryArray.from_arrays(pa.array(zeros), pa.array([properties_json({})], pa.binary()))
        pprops = pa.DictionaryArray.from_arrays(
            pa.array(zeros), pa.array([properties_json(process.properties)], pa.binary())
        )
        time = entries.time[keep]
        yield pa.record_batch(
            [
                const("process_id"),
                const("stream_id"),
                const("block_id"),
                _ts(np.full(n, w_end, dtype=np.int64)),
                const("exe"),
                const("username"),
                const("computer"),
                _ts(time),
                _strings(entries.target_index[keep], targets, options),
                pa.array(entries.level[keep], pa.int32()),
                entries.msg.filter(pa.array(keep)),
                props,
                pprops,
            ],
            schema=schema,
        )


def _leading_columns(
    lake: Lake,
    process: LakeProcess,
    stream_id: str,
    *,
    block: int,
    insert_ns: int,
    n: int,
    options: SchemaOptions,
) -> list[pa.Array]:
    """process_id, stream_id, block_id, insert_time, exe, username, computer (one value each)."""
    zeros = np.zeros(n, dtype=np.int32)
    found = lake.stream(stream_id)
    assert found is not None
    values = (
        process.process_id,
        stream_id,
        found[1].block_id(lake.config.seed, block),
    )
    head = [_strings(zeros, pa.array([v], pa.utf8()), options) for v in values]
    tail = [
        _strings(zeros, pa.array([v], pa.utf8()), options)
        for v in (process.exe, process.username, process.computer)
    ]
    return [*head, _ts(np.full(n, insert_ns, dtype=np.int64)), *tail]


def _properties(process: LakeProcess, n: int) -> list[pa.Array]:
    zeros = pa.array(np.zeros(n, dtype=np.int32))
    return [
        pa.DictionaryArray.from_arrays(zeros, pa.array([properties_json({})], pa.binary())),
        pa.DictionaryArray.from_arrays(zeros, pa.array([properties_json(process.properties)], pa.binary())),
    ]


def measures(
    lake: Lake,
    process_id: str,
    options: SchemaOptions | None = None,
    begin_ns: int | None = None,
    end_ns: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """Rows of ``view_instance('measures', process_id)`` with ``time`` in the range, in time order."""
    options = options or SchemaOptions()
    schema = measures_schema(options)
    process = lake.process(process_id)
    if process is None:
        return
    plan = process.measure_plan
    lo, hi = _range(begin_ns, end_ns)
    for block in range(plan.block_count):
        w_begin, w_end = plan.block_window(block)
        if w_end < lo or w_begin > hi:
            continue
        rng = np.random.default_rng([lake.config.seed, process.index, 5, block])
        rows = metrics.generate_block(rng, plan, block)
        keep = (rows.time >= lo) & (rows.time <= hi)
        n = int(keep.sum())
        if n == 0:
            continue
        mi = rows.metric[keep]
        yield pa.record_batch(
            [
                *_leading_columns(
                    lake,
                    process,
                    process.metrics_stream_id,
                    block=block,
                    insert_ns=w_end,
                    n=n,
                    options=options,
                ),
                _ts(rows.time[keep]),
                _strings(mi, metrics.TARGETS, options),
                _strings(mi, metrics.NAMES, options),
                _strings(mi, metrics.UNITS, options),
                pa.array(rows.value[keep], pa.float64()),
                *_properties(process, n),
            ],
            schema=schema,
        )
