"""SQL of the log entries and measures queries: validated id, exact time filter, time order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker.errors import InvalidRequest
from worker.model import TimeRange
from worker.source.logs import log_entries_sql, measures_sql

PID = "34D7C06D-3163-4111-863E-C5FC09D22D51"
RANGE = TimeRange(1_793_491_200_000_000_001, 1_793_491_260_000_000_000)


@pytest.mark.parametrize(("build", "view"), [(log_entries_sql, "log_entries"), (measures_sql, "measures")])
def test_sql_reads_the_view_in_range_in_time_order(build: Callable[[str, TimeRange], str], view: str) -> None:
    sql = build(PID, RANGE)
    assert f"FROM view_instance('{view}', '{PID.lower()}')" in sql
    assert "\"time\" >= TIMESTAMP '2026-11-01T00:00:00.000000001Z'" in sql
    assert "\"time\" <= TIMESTAMP '2026-11-01T00:01:00.000000000Z'" in sql
    assert sql.endswith('ORDER BY "time"')


@pytest.mark.parametrize("build", [log_entries_sql, measures_sql])
def test_a_bad_id_never_reaches_sql(build: Callable[[str, TimeRange], str]) -> None:
    with pytest.raises(InvalidRequest):
        build("x') UNION SELECT 1 --", RANGE)
