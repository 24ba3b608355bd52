"""Does the devserver stream? Serve a 20-million-span process and watch the server's memory.

Starts ``trace-worker devserver`` as a subprocess with a ``large`` process of ``--spans`` thread
spans (and spans/20 async spans), reads every thread stream with the upstream per-thread SQL, then
all async events, with a bare pyarrow.flight client (DoGet of a TicketStatementQuery), and samples
the server's RSS from /proc every 50 ms. Memory must stay flat: the peak should not grow with the
number of spans served.

    .venv/bin/python -m bench.bench_devserver --spans 20000000
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.flight as fl

from tests.support.devserver import rfc3339, run_devserver_subprocess
from worker.devserver import Lake, LakeConfig
from worker.devserver import flightsql_messages as msg


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20_000_000, help="thread spans of the large process")
    parser.add_argument(
        "--streams", type=int, default=0, help="read only the first N thread streams (0: all)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="thread streams fetched at once (default 1)")
    parser.add_argument("--no-async", action="store_true", help="skip the async events query")
    args = parser.parse_args()

    config = LakeConfig(processes=("large",), large_spans=args.spans)
    process = Lake(config).processes[0]
    flags = ["--processes", "large", "--large-spans", str(args.spans)]
    with run_devserver_subprocess(flags) as server:
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
        options = fl.FlightCallOptions(headers=headers)
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
            ticket = fl.Ticket(msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode())))
            with fl.FlightClient(server.url) as own:
                for chunk in own.do_get(ticket, options=options):
                    with lock:
                        rows += chunk.data.num_rows
                        batches += 1
            with lock:
                marks.append(("thread", rows, samples[-1][1] if samples else baseline))

        started = time.monotonic()
        with fl.FlightClient(server.url) as client:
            with ThreadPoolExecutor(max_workers=args.parallel) as pool:
                list(pool.map(fetch, [s.stream_id for s in streams]))
            thread_secs = time.monotonic() - started
            events = 0
            if not args.no_async:
                t0 = time.monotonic()
                sql = f"SELECT * FROM view_instance('async_events', '{process.process_id}')"
                ticket = fl.Ticket(msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode())))
                for chunk in client.do_get(ticket, options=options):
                    events += chunk.data.num_rows
                async_secs = time.monotonic() - t0
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
        f"server RSS: idle {baseline:.0f} MB; after {quarter[1]:,} spans {quarter[2]:.0f} MB; "
        f"after all {marks[-1][1]:,} spans {marks[-1][2]:.0f} MB; "
        f"peak {peak:.0f} MB over {len(samples)} samples"
    )
    return 0 if rows == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
