"""`trace-worker generate` end to end: spans per second and peak memory, flat in trace size.

For each size in ``--sizes`` (default 1M and 5M thread spans; the ``large`` process also has
spans/20 async spans) it starts ``trace-worker devserver`` as a subprocess, runs
``trace-worker generate`` as another subprocess into a temporary file, and reports:

- wall time of the whole command (interpreter start and imports included) and the time the
  command itself reports (source + engine + file), with spans/s for both;
- the generate process's peak RSS (``wait4`` rusage), which must not grow with the trace;
- the trace size.

The floor: >= 1M spans/s (command time) on the 5M-span process, and peak RSS of the largest size
within 1.25x of the smallest. The machine is shared and the devserver generates data on the same
2 cores, so numbers are noisy; rerun on a quiet machine for the record.

    .venv/bin/python -m bench.bench_generate --sizes 1000000,5000000

The devserver serves its lake from memory (``--in-memory``, generated before it listens) so that
it costs little CPU while the command runs; ``--no-in-memory`` generates rows on the fly instead.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.devserver import run_devserver_subprocess
from worker.devserver import Lake, LakeConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    spans: int
    wall_s: float
    command_s: float
    peak_rss_mb: float
    trace_mb: float


def run_once(thread_spans: int, concurrency: int, in_memory: bool = True) -> Result:
    process = Lake(LakeConfig(processes=("large",), large_spans=thread_spans)).processes[0]
    spans = process.thread_span_count + process.async_span_count
    flags = ["--processes", "large", "--large-spans", str(thread_spans)]
    with run_devserver_subprocess(flags, in_memory=in_memory) as server, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "trace.pftrace"
        argv = [sys.executable, "-m", "worker", "generate", "--flightsql", server.url]
        argv += ["--process-id", process.process_id, "-o", str(out), "--concurrency", str(concurrency)]
        env = dict(os.environ, TRACE_WORKER_FLIGHTSQL_TOKEN="")
        env.pop("TRACE_WORKER_FLIGHTSQL_TOKEN")
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stderr.close()
        if proc.returncode != 0:
            raise SystemExit(f"generate failed ({proc.returncode}):\n{err}")
        match = re.search(r"wrote .* \(([\d,]+) bytes\) in ([\d.]+) s", err)
        if match is None:
            raise SystemExit(f"unexpected generate output:\n{err}")
        size = out.stat().st_size
        server.terminate()
    return Result(spans, wall, float(match[2]), usage.ru_maxrss / 1024, size / 1e6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000000,5000000", help="thread spans per run, comma-separated")
    parser.add_argument("--concurrency", type=int, default=4, help="threads fetched at once")
    parser.add_argument(
        "--in-memory", action=argparse.BooleanOptionalAction, default=True, help="devserver --in-memory"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = [run_once(n, args.concurrency, args.in_memory) for n in sizes]

    columns = ["spans (thread + async)", "wall s", "command s", "spans/s (command)", "spans/s (wall)"]
    columns += ["peak RSS MB", "trace MB"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.spans:,} | {r.wall_s:.2f} | {r.command_s:.2f} | {r.spans / r.command_s / 1e6:.2f} M "
            f"| {r.spans / r.wall_s / 1e6:.2f} M | {r.peak_rss_mb:.0f} | {r.trace_mb:.0f} |"
        )
    largest = max(results, key=lambda r: r.spans)
    smallest = min(results, key=lambda r: r.spans)
    rate_ok = largest.spans / largest.command_s >= 1e6
    flat = largest.peak_rss_mb <= 1.25 * smallest.peak_rss_mb
    print(f"\nfloor >= 1M spans/s on {largest.spans:,} spans: {'PASS' if rate_ok else 'FAIL'}")
    print(
        f"peak RSS flat ({largest.peak_rss_mb:.0f} MB vs {smallest.peak_rss_mb:.0f} MB, limit 1.25x): "
        f"{'PASS' if flat else 'FAIL'}"
    )
    return 0 if rate_ok and flat else 1


if __name__ == "__main__":
    raise SystemExit(main())
