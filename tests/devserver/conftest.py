"""Fixtures for the devserver's own tests: one small lake, servers per mode, an ADBC reader."""

from __future__ import annotations

from collections.abc import Iterator

import adbc_driver_flightsql.dbapi as fsql
import adbc_driver_manager
import pyarrow as pa
import pytest

from tests.support.devserver import rfc3339, small_lake, start_devserver
from worker.devserver import DevServer, Lake, LakeProcess


@pytest.fixture(scope="session")
def lake() -> Lake:
    """The small process plus the 64-thread one: cheap, and every feature appears."""
    return small_lake(processes=("small", "wide"))


@pytest.fixture(scope="session")
def process(lake: Lake) -> LakeProcess:
    return lake.process_of_kind("small")


@pytest.fixture(scope="module")
def strict_server(lake: Lake) -> Iterator[DevServer]:
    with start_devserver(lake) as server:
        yield server


@pytest.fixture(scope="module")
def friendly_server(lake: Lake) -> Iterator[DevServer]:
    with start_devserver(lake, mode="friendly") as server:
        yield server


def full_range(process: LakeProcess) -> dict[str, str]:
    """Range headers covering the whole process."""
    return {"query_range_begin": rfc3339(process.begin_ns), "query_range_end": rfc3339(process.end_ns)}


def adbc_read(
    url: str,
    sql: str,
    headers: dict[str, str] | None = None,
    *,
    db_kwargs: dict[str, str] | None = None,
) -> tuple[pa.Schema, pa.Table]:
    """Run ``sql`` the way that works against Micromegas: execute_partitions + read_partition.

    Returns:
        The schema from the FlightInfo and the rows read from the partitions.
    """
    kwargs = {f"adbc.flight.sql.rpc.call_header.{k}": v for k, v in (headers or {}).items()}
    kwargs.update(db_kwargs or {})
    with fsql.connect(url, db_kwargs=kwargs, autocommit=True) as conn:
        stmt = adbc_driver_manager.AdbcStatement(conn.adbc_connection)
        try:
            stmt.set_sql_query(sql)
            partitions, schema_handle, _ = stmt.execute_partitions()
            assert schema_handle is not None
            info_schema = pa.Schema._import_from_c(schema_handle.address)
            tables = []
            for partition in partitions:
                handle = conn.adbc_connection.read_partition(partition)
                reader = pa.RecordBatchReader._import_from_c(handle.address)
                try:
                    tables.append(reader.read_all())
                finally:
                    reader.close()
        finally:
            stmt.close()
    return info_schema, pa.concat_tables(tables)
