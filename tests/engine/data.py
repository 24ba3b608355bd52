"""Builders of engine input batches for the tests and the benchmark's checks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from worker.model import ProcessInfo, ThreadInfo, TimeRange

PROCESS = ProcessInfo(
    process_id="34d7c06d-3163-4111-863e-c5fc09d22d51",
    exe="telemetry-generator",
    username="alice",
    computer="box",
    start_time_ns=1_000,
)
THREADS = [ThreadInfo("stream-a", "main", "101"), ThreadInfo("stream-b", "worker", "102")]
RANGE = TimeRange(1_000_000, 9_000_000)
TS = pa.timestamp("ns", tz="+00:00")


@dataclass(frozen=True)
class Span:
    begin: int
    end: int
    depth: int
    name: str
    target: str = "app"
    filename: str = "main.rs"
    line: int = 1


def _strings(values: Sequence[str | None], encoding: str) -> pa.Array:
    arr = pa.array(values, type=pa.string())
    if encoding == "plain":
        return arr
    if encoding == "large":
        return arr.cast(pa.large_string())
    index_type = {"dict8": pa.int8(), "dict16": pa.int16(), "dict32": pa.int32(), "dict64": pa.int64()}[
        encoding
    ]
    enc = pc.dictionary_encode(arr)
    # Reverse the dictionary order so dictionary order differs from first-appearance order.
    dictionary = enc.dictionary.to_pylist()[::-1]
    remap = {v: i for i, v in enumerate(dictionary)}
    indices = pa.array([None if v is None else remap[v] for v in values], type=index_type)
    return pa.DictionaryArray.from_arrays(indices, pa.array(dictionary, type=pa.string()))


def thread_batch(spans: Sequence[Span], encoding: str = "dict32", times: str = "timestamp") -> pa.RecordBatch:
    time_type = TS if times == "timestamp" else pa.int64()
    return pa.record_batch(
        {
            "id": pa.array(range(len(spans)), type=pa.int64()),
            "begin": pa.array([s.begin for s in spans], type=pa.int64()).cast(time_type),
            "end": pa.array([s.end for s in spans], type=pa.int64()).cast(time_type),
            "name": _strings([s.name for s in spans], encoding),
            "target": _strings([s.target for s in spans], encoding),
            "filename": _strings([s.filename for s in spans], encoding),
            "line": pa.array([s.line for s in spans], type=pa.uint32()),
            "depth": pa.array([s.depth for s in spans], type=pa.uint32()),
        }
    )


@dataclass(frozen=True)
class AsyncEvent:
    time: int
    kind: str
    span_id: int
    parent: int = 0
    name: str = "op"
    target: str = "async"
    filename: str = "lib.rs"
    line: int = 7
    stream: str = "stream-a"


def async_batch(events: Sequence[AsyncEvent], encoding: str = "dict32") -> pa.RecordBatch:
    return pa.record_batch(
        {
            "stream_id": _strings([e.stream for e in events], encoding),
            "block_id": _strings(["block"] * len(events), encoding),
            "time": pa.array([e.time for e in events], type=pa.int64()).cast(TS),
            "event_type": _strings([e.kind for e in events], encoding),
            "span_id": pa.array([e.span_id for e in events], type=pa.int64()),
            "parent_span_id": pa.array([e.parent for e in events], type=pa.int64()),
            "depth": pa.array([0] * len(events), type=pa.uint32()),
            "hash": pa.array([0] * len(events), type=pa.uint32()),
            "name": _strings([e.name for e in events], encoding),
            "target": _strings([e.target for e in events], encoding),
            "filename": _strings([e.filename for e in events], encoding),
            "line": pa.array([e.line for e in events], type=pa.uint32()),
        }
    )


def split(batch: pa.RecordBatch, cuts: Sequence[int]) -> list[pa.RecordBatch]:
    """The batch cut at the given row offsets (any order, duplicates allowed)."""
    bounds = sorted({0, batch.num_rows, *(c for c in cuts if 0 < c < batch.num_rows)})
    return [batch.slice(lo, hi - lo) for lo, hi in itertools.pairwise(bounds)]
