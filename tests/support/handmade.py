"""Small hand-made lakes served over the real Flight SQL wire, every statement run by DataFusion.

A :class:`HandLake` is one process: its thread spans per stream and its async events, as plain rows.
:func:`handmade_server` starts an in-process devserver (Micromegas mode: zero-field FlightInfo, no
prepared statements, range headers mandatory for ``thread_spans``) whose query engine is replaced:
every statement the worker sends (process, thread list, thread spans, async events, the async
look-back anti-join) runs as written in DataFusion over this lake's ``blocks`` table and
``view_instance`` views. Then, as a real server may, the answer is reshaped without changing its rows:

- **ties permuted**: rows whose ``ORDER BY`` key ties (``begin`` / ``time``) are shuffled among
  themselves (seeded by :attr:`Serving.seed`);
- **batches split**: the rows are cut into batches at random places (same seed).

So a test can serve the same lake with other tie orders and batch boundaries and compare the bytes::

    with handmade_server() as (server, serving):
        serving.lake, serving.seed = lake, 3
        ...  # FlightSqlSource(FlightSqlConfig(server.url)) / generate_trace
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import Expr, SessionConfig, SessionContext, Table, udtf

from worker.devserver import DevServer
from worker.devserver.lake import Lake, LakeConfig
from worker.devserver.query import PlannedQuery
from worker.devserver.tables import property_get_udf

__all__ = ["AsyncRow", "HandLake", "Serving", "ThreadRow", "handmade_server"]

TS = pa.timestamp("ns", tz="+00:00")
PROCESS_ID = "5f0c2a4e-1b7d-4c3a-9e21-7d4f3b2a1c00"
STREAMS = ("0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002")


@dataclass(frozen=True)
class ThreadRow:
    """One ``thread_spans`` row."""

    begin: int
    end: int
    depth: int
    name: str
    target: str = "app"
    filename: str = "main.rs"
    line: int = 1


@dataclass(frozen=True)
class AsyncRow:
    """One ``async_events`` row."""

    time: int
    kind: str  # "begin" / "end"
    span_id: int
    parent: int = 0
    name: str = "op"
    stream: str = STREAMS[0]
    target: str = "async"
    filename: str = "lib.rs"
    line: int = 7


@dataclass
class HandLake:
    """One process. Times are epoch ns; ``first_ns`` / ``last_ns`` are its blocks' bounds."""

    start_ns: int
    first_ns: int
    last_ns: int
    threads: dict[str, list[ThreadRow]] = field(default_factory=dict)
    events: list[AsyncRow] = field(default_factory=list)
    process_id: str = PROCESS_ID
    exe: str = "hand-made"


@dataclass
class Serving:
    """What the server answers with, changeable between requests."""

    lake: HandLake | None = None
    #: Seeds the tie permutation and the batch splits (None: DataFusion's order, one batch).
    seed: int | None = None
    #: Statements seen (newest last), for tests of what the worker asks.
    statements: list[str] = field(default_factory=list)


def _blocks(lake: HandLake) -> pa.Table:
    streams = list(lake.threads) or [STREAMS[0]]
    n = len(streams)
    props = [json.dumps({"thread-name": f"t{i}", "thread-id": str(100 + i)}) for i in range(n)]
    return pa.table(
        {
            "block_id": [f"b{i}" for i in range(n)],
            "stream_id": streams,
            "process_id": [lake.process_id] * n,
            "begin_time": pa.array([lake.first_ns] * n, pa.int64()).cast(TS),
            "end_time": pa.array([lake.last_ns] * n, pa.int64()).cast(TS),
            "streams.tags": pa.array([["cpu"]] * n, pa.list_(pa.field("tag", pa.utf8()))),
            "streams.properties": pa.array([p.encode() for p in props], pa.binary()).dictionary_encode(),
            "processes.exe": [lake.exe] * n,
            "processes.username": ["alice"] * n,
            "processes.realname": ["Alice"] * n,
            "processes.computer": ["box"] * n,
            "processes.distro": ["Debian"] * n,
            "processes.cpu_brand": ["cpu"] * n,
            "processes.start_time": pa.array([lake.start_ns] * n, pa.int64()).cast(TS),
        }
    )


def _thread_table(rows: list[ThreadRow]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(len(rows)), pa.int64()),
            "parent": pa.array([0] * len(rows), pa.int64()),
            "depth": pa.array([r.depth for r in rows], pa.uint32()),
            "hash": pa.array([0] * len(rows), pa.uint32()),
            "begin": pa.array([r.begin for r in rows], pa.int64()).cast(TS),
            "end": pa.array([r.end for r in rows], pa.int64()).cast(TS),
            "duration": pa.array([r.end - r.begin for r in rows], pa.int64()),
            "name": pa.array([r.name for r in rows], pa.utf8()),
            "target": pa.array([r.target for r in rows], pa.utf8()),
            "filename": pa.array([r.filename for r in rows], pa.utf8()),
            "line": pa.array([r.line for r in rows], pa.uint32()),
        }
    )


def _async_table(rows: list[AsyncRow]) -> pa.Table:
    return pa.table(
        {
            "stream_id": pa.array([r.stream for r in rows], pa.utf8()),
            "block_id": pa.array(["b0"] * len(rows), pa.utf8()),
            "time": pa.array([r.time for r in rows], pa.int64()).cast(TS),
            "event_type": pa.array([r.kind for r in rows], pa.utf8()),
            "span_id": pa.array([r.span_id for r in rows], pa.int64()),
            "parent_span_id": pa.array([r.parent for r in rows], pa.int64()),
            "depth": pa.array([0] * len(rows), pa.uint32()),
            "hash": pa.array([0] * len(rows), pa.uint32()),
            "name": pa.array([r.name for r in rows], pa.utf8()),
            "filename": pa.array([r.filename for r in rows], pa.utf8()),
            "target": pa.array([r.target for r in rows], pa.utf8()),
            "line": pa.array([r.line for r in rows], pa.uint32()),
        }
    )


def _dataset(table: pa.Table) -> ds.Dataset:
    """A dataset DataFusion can plan over. An empty view gets one row of nulls instead (DataFusion
    rejects plans over a dataset without fragments); every statement the worker sends filters on a
    time column, which a null never passes."""
    if table.num_rows == 0:
        nulls = [pa.nulls(1, f.type) for f in table.schema]
        table = pa.Table.from_batches([pa.RecordBatch.from_arrays(nulls, schema=table.schema)])
    return ds.dataset(table)


_ORDER_BY = re.compile(r'ORDER BY "?(\w+)"?\s*$')


class _HandEngine:
    """Runs every statement in DataFusion over :attr:`Serving.lake`, then permutes ties and splits."""

    def __init__(self, real: Any, serving: Serving) -> None:
        self._real = real
        self._serving = serving

    def plan(self, sql: str, headers: Any, params: Any = None) -> PlannedQuery:
        serving = self._serving
        lake = serving.lake
        if lake is None:
            return self._real.plan(sql, headers, params)  # type: ignore[no-any-return]
        serving.statements.append(sql)
        ctx = SessionContext(SessionConfig().with_information_schema(False))
        ctx.register_record_batches("blocks", [_blocks(lake).to_batches()])
        ctx.register_udf(property_get_udf())

        @udtf("view_instance")
        def view_instance(view: Expr, instance: Expr) -> Table:
            v, i = Expr(view).python_value().as_py(), Expr(instance).python_value().as_py()
            if v == "thread_spans":
                if headers.range_ns is None:
                    raise ValueError("query range mandatory for thread spans view")
                return Table(_dataset(_thread_table(lake.threads.get(i, []))))
            if v == "async_events":
                return Table(_dataset(_async_table(lake.events if i == lake.process_id else [])))
            raise ValueError(f"unknown view set {v!r}")

        ctx.register_udtf(view_instance)
        try:
            table = ctx.sql(sql).to_arrow_table()
        except Exception as exc:
            raise ValueError(str(exc)) from exc
        batches = self._reshape(sql, table)
        return PlannedQuery(table.schema, batches.__iter__, True)

    def _reshape(self, sql: str, table: pa.Table) -> list[pa.RecordBatch]:
        seed = self._serving.seed
        if seed is None or table.num_rows == 0:
            batches: list[pa.RecordBatch] = table.to_batches()
            return batches
        rng = random.Random(f"{seed}/{sql}")
        order = list(range(table.num_rows))
        m = _ORDER_BY.search(sql)
        if m is not None and m.group(1) in ("begin", "time") and m.group(1) in table.column_names:
            keys = table.column(m.group(1)).cast(pa.int64()).to_pylist()
            start = 0
            for i in range(1, len(keys) + 1):
                if i == len(keys) or keys[i] != keys[start]:
                    run = order[start:i]
                    rng.shuffle(run)
                    order[start:i] = run
                    start = i
        table = table.take(pa.array(order, pa.int64()))
        cuts = sorted(rng.sample(range(1, table.num_rows), k=min(rng.randint(0, 4), table.num_rows - 1)))
        bounds = [0, *cuts, table.num_rows]
        return [
            table.slice(a, b - a).combine_chunks().to_batches()[0]
            for a, b in itertools.pairwise(bounds)
            if b > a
        ]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def handmade_server() -> Iterator[tuple[DevServer, Serving]]:
    """A started in-process devserver (Micromegas mode) answering from :attr:`Serving.lake`."""
    serving = Serving()
    lake = Lake(LakeConfig(seed=1, scale=0.01, processes=("small",)))
    with DevServer(lake).start() as server:
        inner = server._server
        assert inner is not None
        inner.engine = _HandEngine(inner.engine, serving)  # type: ignore[assignment]
        yield server, serving
