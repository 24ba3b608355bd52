"""The devserver's `measures` view: deterministic, exact counts, range filter, served in both modes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.devserver.conftest import adbc_read, full_range
from tests.support.devserver import rfc3339
from worker.devserver import DevServer, Lake, LakeConfig, LakeProcess, measures
from worker.devserver.metrics import METRICS


def _table(batches: object) -> pa.Table:
    return pa.Table.from_batches(list(batches))  # type: ignore[call-overload]


def test_same_seed_same_measures_and_exact_counts() -> None:
    config = LakeConfig(seed=3, processes=("small", "wide"))
    lake_a, lake_b = Lake(config), Lake(config)
    for pa_, pb_ in zip(lake_a.processes, lake_b.processes, strict=True):
        ta, tb = _table(measures(lake_a, pa_.process_id)), _table(measures(lake_b, pb_.process_id))
        assert ta.equals(tb)
        assert ta.num_rows == pa_.measure_count > 1000
        times = ta.column("time").cast(pa.int64()).to_pylist()
        assert times == sorted(times)
        assert set(ta.column("name").to_pylist()) == {m[1] for m in METRICS}
        assert pa.compute.min(ta.column("value")).as_py() >= 0.0


def test_range_filter_keeps_only_rows_inside(lake: Lake, process: LakeProcess) -> None:
    third = (process.end_ns - process.begin_ns) // 3
    lo, hi = process.begin_ns + third, process.begin_ns + 2 * third
    inside = _table(measures(lake, process.process_id, None, lo, hi))
    times = inside.column("time").cast(pa.int64()).to_pylist()
    assert times and min(times) >= lo and max(times) <= hi
    every = _table(measures(lake, process.process_id)).column("time").cast(pa.int64()).to_pylist()
    assert len(times) == sum(lo <= t <= hi for t in every)


@pytest.mark.parametrize("mode", ["strict", "friendly"])
def test_served_over_flight_sql(
    mode: str, strict_server: DevServer, friendly_server: DevServer, process: LakeProcess
) -> None:
    server = strict_server if mode == "strict" else friendly_server
    sql = (
        'SELECT "time", "target", "name", "unit", "value" '
        f"FROM view_instance('measures', '{process.process_id}') "
        f'WHERE "time" >= TIMESTAMP \'{rfc3339(process.begin_ns)}\' ORDER BY "time"'
    )
    _, table = adbc_read(server.url, sql, full_range(process))
    assert table.num_rows == process.measure_count
    assert table.schema.field("value").type == pa.float64()
    assert table.schema.field("unit").type == pa.utf8()  # hydrated, as Micromegas sends by default
