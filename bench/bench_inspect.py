"""`trace-worker inspect` on the devserver's ``large`` process trace: wall, CPU (user+sys), peak RSS.

Generates the trace once (``trace-worker devserver --processes large`` in a subprocess, then
``trace-worker generate`` into ``--trace``, default ``/tmp/trace-worker-large.pftrace``; an existing
file is reused), then runs ``trace-worker inspect FILE`` ``--runs`` times as a subprocess and reports
each run's wall time, CPU time (user+sys, from ``wait4`` rusage; the machine is shared, so CPU time is
the steadier figure) and peak RSS. Floor: 440 MB in <= 15 s and <= 300 MB peak RSS.

    .venv/bin/python -m bench.bench_inspect --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.devserver import run_devserver_subprocess
from worker.devserver import Lake, LakeConfig

ROOT = Path(__file__).resolve().parents[1]


def generate(out: Path) -> None:
    """Write the ``large`` process's trace (devserver defaults) to ``out``."""
    process = Lake(LakeConfig(processes=("large",))).processes[0]
    with run_devserver_subprocess(["--processes", "large"]) as server:
        argv = [sys.executable, "-m", "worker", "generate", "--flightsql", server.url]
        argv += ["--process-id", process.process_id, "-o", str(out)]
        env = {k: v for k, v in os.environ.items() if k != "TRACE_WORKER_FLIGHTSQL_TOKEN"}
        subprocess.run(argv, cwd=ROOT, env=env, check=True)
        server.terminate()


def run_inspect(trace: Path) -> tuple[float, float, float, int]:
    """(wall s, user+sys s, peak RSS MB, exit status) of one ``trace-worker inspect`` run."""
    argv = [sys.executable, "-m", "worker", "inspect", str(trace)]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trace", type=Path, default=Path("/tmp/trace-worker-large.pftrace"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not args.trace.is_file():
        generate(args.trace)
    print(f"trace: {args.trace} ({args.trace.stat().st_size / 1e6:,.0f} MB)")
    print(f"load: {os.getloadavg()}")
    for _ in range(args.runs):
        wall, cpu, rss, code = run_inspect(args.trace)
        print(f"wall {wall:.1f} s  cpu(user+sys) {cpu:.1f} s  peak RSS {rss:.0f} MB  exit {code}")


if __name__ == "__main__":
    main()
