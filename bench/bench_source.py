"""Source throughput vs a bare Flight SQL fetch of the same rows, in one run.

Starts ``trace-worker devserver`` as a subprocess with a ``large`` process of ``--spans`` thread
spans and reads every thread's spans three ways, with the same SQL, headers and server:

- bare ADBC: one connection, thread after thread, ``execute_partitions`` + ``read_partition``
  (the only ADBC path that works against Micromegas), rows counted and dropped;
- bare pyarrow.flight: DoGet of a hand-made ``TicketStatementQuery`` (what upstream's Python
  client does; the fastest Flight path, for reference);
- the source: ``FlightSqlSource.thread_spans`` (bounded concurrent fetch, schema checks, ordered
  hand-over), as the pipeline consumes it.

Each method runs ``--runs`` times, interleaved; the best time counts (the machine is shared, so the
best run is the least disturbed). The floor: the source within 1.5x of bare ADBC.

    .venv/bin/python -m bench.bench_source --spans 5000000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import adbc_driver_flightsql as fsql
import adbc_driver_manager as adbc
import pyarrow as pa
import pyarrow.flight as fl

from tests.support.devserver import run_devserver_subprocess
from worker.devserver import Lake, LakeConfig, LakeProcess
from worker.devserver import flightsql_messages as msg
from worker.model import ThreadInfo, TimeRange
from worker.source import FlightSqlConfig, FlightSqlSource, queries

HEADER = "adbc.flight.sql.rpc.call_header."


def _headers(time_range: TimeRange) -> dict[str, str]:
    return {
        "query_range_begin": queries.header_time(time_range.begin_ns, round_up=False),
        "query_range_end": queries.header_time(time_range.end_ns, round_up=True),
        "preserve_dictionary": "true",
    }


def bare_adbc(url: str, sqls: list[str], headers: dict[str, str]) -> int:
    db = fsql.connect(url, db_kwargs={fsql.DatabaseOptions.WITH_MAX_MSG_SIZE.value: str(256 << 20)})
    conn = adbc.AdbcConnection(db)
    conn.set_options(**{HEADER + k: v for k, v in headers.items()})
    rows = 0
    try:
        for sql in sqls:
            stmt = adbc.AdbcStatement(conn)
            stmt.set_sql_query(sql)
            partitions, _, _ = stmt.execute_partitions()
            for part in partitions:
                handle = conn.read_partition(part)  # keep it alive while importing
                reader = pa.RecordBatchReader._import_from_c(handle.address)
                for batch in reader:
                    rows += batch.num_rows
                reader.close()
            stmt.close()
    finally:
        conn.close()
        db.close()
    return rows


def bare_flight(url: str, sqls: list[str], headers: dict[str, str]) -> int:
    options = fl.FlightCallOptions(headers=[(k.encode(), v.encode()) for k, v in headers.items()])
    rows = 0
    with fl.FlightClient(url) as client:
        for sql in sqls:
            ticket = fl.Ticket(msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode())))
            for chunk in client.do_get(ticket, options=options):
                rows += chunk.data.num_rows
    return rows


def source(url: str, process: LakeProcess, time_range: TimeRange, concurrency: int) -> int:
    async def run() -> int:
        src = FlightSqlSource(FlightSqlConfig(url, concurrency=concurrency))
        rows = 0
        try:
            threads = await src.threads(process.process_id, time_range)
            async for _thread, batch in src.thread_spans(threads, time_range):
                if batch is not None:
                    rows += batch.num_rows
        finally:
            await src.aclose()
        return rows

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=5_000_000, help="thread spans of the large process")
    parser.add_argument("--concurrency", type=int, default=4, help="the source's concurrent fetches")
    parser.add_argument("--runs", type=int, default=2, help="runs of each method (best counts)")
    args = parser.parse_args()

    process = Lake(LakeConfig(processes=("large",), large_spans=args.spans)).processes[0]
    time_range = TimeRange(process.begin_ns, process.end_ns)
    streams = sorted(process.thread_streams, key=lambda s: s.stream_id)
    threads = [ThreadInfo(s.stream_id) for s in streams]
    sqls = [queries.thread_spans_sql(t.stream_id, time_range) for t in threads]
    headers = _headers(time_range)
    expected = process.thread_span_count
    flags = ["--processes", "large", "--large-spans", str(args.spans)]
    methods: dict[str, Callable[[str], int]] = {
        "bare ADBC (1 connection, sequential)": lambda url: bare_adbc(url, sqls, headers),
        "bare pyarrow.flight DoGet (sequential)": lambda url: bare_flight(url, sqls, headers),
        f"FlightSqlSource.thread_spans (concurrency {args.concurrency})": lambda url: source(
            url, process, time_range, args.concurrency
        ),
    }
    best: dict[str, float] = {}
    with run_devserver_subprocess(flags) as server:
        for _ in range(args.runs):
            for name, method in methods.items():
                started = time.perf_counter()
                rows = method(server.url)
                elapsed = time.perf_counter() - started
                if rows != expected:
                    print(f"{name}: read {rows:,} rows, expected {expected:,}")
                    return 1
                best[name] = min(best.get(name, elapsed), elapsed)
        server.terminate()

    bare = best[next(iter(methods))]
    print(f"{expected:,} thread spans in {len(threads)} threads, best of {args.runs} runs\n")
    print("| method | seconds | M rows/s | time vs bare ADBC |")
    print("|---|---|---|---|")
    for name, secs in best.items():
        print(f"| {name} | {secs:.2f} | {expected / secs / 1e6:.2f} | {secs / bare:.2f}x |")
    ratio = best[list(methods)[2]] / bare
    verdict = "PASS" if ratio <= 1.5 else "FAIL"
    print(f"\nfloor (source within 1.5x of bare ADBC): {verdict} ({ratio:.2f}x)")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
