"""Schema checks of incoming batches: plain / dictionary strings of any key width, bad types refused."""

from __future__ import annotations

import pyarrow as pa
import pytest

from worker.errors import BadSourceData
from worker.source.columns import THREAD_KINDS, THREAD_SPAN_KINDS, BatchChecker

TS = pa.timestamp("ns", tz="+00:00")


def _spans(string: pa.DataType, ts: pa.DataType = TS) -> pa.RecordBatch:
    names = pa.array(["a", "b"], pa.utf8())
    strings = (
        names.cast(string) if not pa.types.is_dictionary(string) else names.dictionary_encode().cast(string)
    )
    return pa.RecordBatch.from_pydict(
        {
            "begin": pa.array([1, 2], pa.int64()).cast(ts),
            "end": pa.array([3, 4], pa.int64()).cast(ts),
            "name": strings,
            "target": strings,
            "filename": strings,
            "line": pa.array([1, 2], pa.uint32()),
            "depth": pa.array([0, 1], pa.uint32()),
        }
    )


@pytest.mark.parametrize(
    "string",
    [
        pa.utf8(),
        pa.large_utf8(),
        pa.dictionary(pa.int8(), pa.utf8()),
        pa.dictionary(pa.int16(), pa.utf8()),
        pa.dictionary(pa.int32(), pa.utf8()),
        pa.dictionary(pa.int64(), pa.large_utf8()),
    ],
)
def test_string_spellings_pass_unchanged(string: pa.DataType) -> None:
    batch = _spans(string)
    assert BatchChecker("q", THREAD_SPAN_KINDS)(batch) is batch


def test_timestamps_are_normalised_to_ns_utc() -> None:
    out = BatchChecker("q", THREAD_SPAN_KINDS)(_spans(pa.utf8(), pa.timestamp("us")))
    assert out.schema.field("begin").type == TS
    assert out.column("begin").cast(pa.int64()).to_pylist() == [1000, 2000]


def test_missing_column_is_bad_data() -> None:
    batch = _spans(pa.utf8()).drop_columns(["name"])
    with pytest.raises(BadSourceData, match="'name' is missing"):
        BatchChecker("q", THREAD_SPAN_KINDS)(batch)


def test_wrong_type_is_bad_data() -> None:
    batch = _spans(pa.utf8())
    batch = batch.set_column(batch.schema.get_field_index("line"), "line", pa.array(["1", "2"]))
    with pytest.raises(BadSourceData, match="'line' should be a integer"):
        BatchChecker("q", THREAD_SPAN_KINDS)(batch)


def test_binary_names_refused_for_spans_but_accepted_as_text() -> None:
    batch = _spans(pa.binary())
    with pytest.raises(BadSourceData):
        BatchChecker("q", THREAD_SPAN_KINDS)(batch)
    threads = pa.RecordBatch.from_pydict(
        {
            "stream_id": pa.array([b"s"]),
            "thread_name": pa.array(["t"]),
            "thread_id": pa.array([None], pa.utf8()),
        }
    )
    assert BatchChecker("q", THREAD_KINDS)(threads) is threads


def test_schema_change_is_rechecked() -> None:
    check = BatchChecker("q", THREAD_SPAN_KINDS)
    check(_spans(pa.utf8()))
    with pytest.raises(BadSourceData):
        check(_spans(pa.utf8()).drop_columns(["depth"]))
