"""Does the devserver stream? Serve a 20-million-span process and watch the server's memory.

Starts ``trace-worker devserver`` as a subprocess with a ``large`` process of ``--spans`` thread
spans (and spans/20 async spans), reads every thread stream with the upstream per-thread SQL, then
all async events, with a bare pyarrow.flight client (DoGet of a TicketStatementQuery), and samples
the server's RSS from /proc every 50 ms. Memory must stay flat: the peak should not grow with the
number of spans served.

    .venv/bin/python -m bench.bench_devserver --spans 20000000
    .venv/bin/python -m bench.bench_devserver --in-memory --spans 5000000 --preserve-dictionary

``--in-memory`` serves the lake held in memory (generated at start, before the server listens):
memory then grows with the lake, and rows/s is the figure to watch. Server and client CPU seconds
(user + sys) of the serving phase are printed beside the wall time (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import adbc_driver_flightsql as fsql
import adbc_driver_manager as adbc
import pyarrow as pa
import pyarrow.flight as fl

from tests.support.devserver import rfc3339, run_devserver_subprocess
from worker.devserver import Lake, LakeConfig
from worker.devserver import flightsql_messages as msg


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20_000_000, help="thread spans of the large process")
    parser.add_argument(
        "--streams", type=int, default=0, help="read only the first N thread streams (0: all)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="thread streams fetched at once (default 1)")
    parser.add_argument("--no-async", action="store_true", help="skip the async events query")
    parser.add_argument("--in-memory", action="store_true", help="serve the lake held in memory")
    parser.add_argument(
        "--preserve-dictionary",
        action="store_true",
        help="ask for dictionary-encoded strings (header preserve_dictionary: true), as the worker does",
    )
    parser.add_argument("--batch-rows", type=int, default=0, help="devserver --batch-rows (0: its default)")
    parser.add_argument(
        "--client",
        choices=("flight", "adbc"),
        default="flight",
        help="bare pyarrow.flight DoGet, or ADBC Flight SQL (execute_partitions + read_partition, as "
        "against Micromegas; the worker's driver) (default flight)",
    )
    args = parser.parse_args()

    config = LakeConfig(processes=("large",), large_spans=args.spans)
    process = Lake(config).processes[0]
    flags = ["--processes", "large", "--large-spans", str(args.spans)]
    flags += ["--batch-rows", str(args.batch_rows)] if args.batch_rows else []
    with run_devserver_subprocess(flags, in_memory=args.in_memory) as server:
        pid = server.proc.pid
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                samples.append((time.monotonic(), rss_mb(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        baseline = rss_mb(pid)
        sampler.start()
        headers = [
            (b"query_range_begin", rfc3339(process.begin_ns).encode()),
            (b"query_range_end", rfc3339(process.end_ns).encode()),
        ]
        if args.preserve_dictionary:
            headers.append((b"preserve_dictionary", b"true"))
        options = fl.FlightCallOptions(headers=headers)
        prefix = fsql.ConnectionOptions.RPC_CALL_HEADER_PREFIX.value
        db_kwargs = {prefix + k.decode(): v.decode() for k, v in headers}
        db_kwargs[fsql.DatabaseOptions.WITH_MAX_MSG_SIZE.value] = str(256 * 2**20)
        database = fsql.connect(server.url, db_kwargs=db_kwargs) if args.client == "adbc" else None

        def read(sql: str) -> Iterator[int]:
            """Rows of each batch received for ``sql``."""
            if database is None:
                ticket = fl.Ticket(msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode())))
                with fl.FlightClient(server.url) as own:
                    for chunk in own.do_get(ticket, options=options):
                        yield chunk.data.num_rows
                return
            with adbc.AdbcConnection(database) as conn, adbc.AdbcStatement(conn) as stmt:
                stmt.set_sql_query(sql)
                partitions, _, _ = stmt.execute_partitions()
                for partition in partitions:
                    handle = conn.read_partition(partition)
                    with pa.RecordBatchReader._import_from_c(handle.address) as reader:
                        for batch in reader:
                            yield batch.num_rows

        begin, end = rfc3339(process.begin_ns), rfc3339(process.end_ns)
        streams = process.thread_streams[: args.streams or None]
        rows = batches = 0
        marks: list[tuple[str, int, float]] = []
        lock = threading.Lock()

        def fetch(stream_id: str) -> None:
            nonlocal rows, batches
            sql = (
                'SELECT "begin", "end", name, filename, target, line '
                f"FROM view_instance('thread_spans', '{stream_id}') "
                f"WHERE begin <= TIMESTAMP '{end}' AND end >= TIMESTAMP '{begin}' ORDER BY begin"
            )
            for n in read(sql):
                with lock:
                    rows += n
                    batches += 1
            with lock:
                marks.append(("thread", rows, samples[-1][1] if samples else baseline))

        server_cpu0, client_cpu0 = cpu_s(pid), time.process_time()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(fetch, [s.stream_id for s in streams]))
        thread_secs = time.monotonic() - started
        events = 0
        if not args.no_async:
            t0 = time.monotonic()
            events = sum(read(f"SELECT * FROM view_instance('async_events', '{process.process_id}')"))
            async_secs = time.monotonic() - t0
        server_cpu, client_cpu = cpu_s(pid) - server_cpu0, time.process_time() - client_cpu0
        if database is not None:
            database.close()
        done.set()
        sampler.join()
        assert server.terminate() == 0

    expected = sum(s.thread_span_count for s in streams)
    peak = max(mb for _, mb in samples)
    quarter = marks[max(0, len(marks) // 4 - 1)]
    print(
        f"thread spans served: {rows:,} (expected {expected:,}) in {batches:,} batches, {thread_secs:.1f} s, "
        f"{rows / thread_secs / 1e6:.2f} M rows/s"
    )
    if not args.no_async:
        print(
            f"async events served: {events:,} in {async_secs:.1f} s "
            f"({events / async_secs / 1e6:.2f} M rows/s)"
        )
    print(
        f"CPU (thread spans + async events): server {server_cpu:.2f} s, client {client_cpu:.2f} s; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"server RSS: idle {baseline:.0f} MB; after {quarter[1]:,} spans {quarter[2]:.0f} MB; "
        f"after all {marks[-1][1]:,} spans {marks[-1][2]:.0f} MB; "
        f"peak {peak:.0f} MB over {len(samples)} samples"
    )
    return 0 if rows == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
