"""Async lanes as Perfetto imports them, per devserver process: rows after track merging vs concurrency.

For each process in ``--processes`` (default ``small,typical,large``) it starts ``trace-worker devserver``
as a subprocess, runs ``trace-worker generate --span-types async`` into a temporary file, and reads the
trace with the model of Perfetto's import in tests/engine/perfetto_import.py (track compressor, nesting
per row, flows; Perfetto's own trace processor cannot be installed here). It prints per process: async
slices, the peak number of spans open at once (closed intervals), the deepest chain of spans shown under
or linked to their parent, lane tracks (descriptors), async rows after import, spans drawn under their
parent, flows, import stats, and bytes per async span. The issue's target: rows <= peak + depth, no stat.

    .venv/bin/python -m bench.bench_lanes --processes small,typical,large
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.engine.perfetto_import import Imported, import_trace
from tests.support.devserver import run_devserver_subprocess
from worker.devserver import Lake, LakeConfig

ROOT = Path(__file__).resolve().parents[1]


def peak(intervals: list[tuple[int, int]]) -> int:
    """Most closed intervals sharing one instant."""
    points = sorted([(b, 0) for b, _ in intervals] + [(e, 1) for _, e in intervals])
    best = now = 0
    for _, kind in points:
        now += 1 if kind == 0 else -1
        best = max(best, now)
    return best


def depth(imported: Imported) -> int:
    """The longest chain of spans each under (on its row) or linked by a flow to the previous one."""
    parent = {dst: src for src, dst in imported.flows}
    parent.update({k: s.parent for k, s in enumerate(imported.slices) if s.parent is not None})
    memo: dict[int, int] = {}
    best = 0
    for start in range(len(imported.slices)):
        chain = []
        k = start
        while k not in memo and k in parent:
            chain.append(k)
            k = parent[k]
        level = memo.setdefault(k, 1)
        for c in reversed(chain):
            level += 1
            memo[c] = level
        best = max(best, level)
    return best


def trace_of(name: str, out: Path) -> None:
    process = Lake(LakeConfig(processes=(name,))).processes[0]
    with run_devserver_subprocess(["--processes", name]) as server:
        argv = [sys.executable, "-m", "worker", "generate", "--flightsql", server.url, "--quiet"]
        argv += ["--process-id", process.process_id, "--span-types", "async", "-o", str(out)]
        env = {k: v for k, v in os.environ.items() if k != "TRACE_WORKER_FLIGHTSQL_TOKEN"}
        subprocess.run(argv, cwd=ROOT, env=env, check=True)
        server.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", default="small,typical,large")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}")
    print(
        "| process | async slices | peak open | depth | lane tracks | rows after import | under parent "
        "| flows | import stats | bytes/span |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name in args.processes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "async.pftrace"
            trace_of(name, path)
            data = path.read_bytes()
        started = time.perf_counter()
        got = import_trace(data)
        took = time.perf_counter() - started
        slices = got.slices
        busy = peak([(s.begin, s.end if s.end is not None else s.begin) for s in slices])
        rows = sum(v for k, v in got.rows.items() if isinstance(k, tuple) and k[-1] == "async")
        lanes = len({s.uuid for s in slices})
        under = sum(s.parent is not None for s in slices)
        stats = ", ".join(f"{k}={v}" for k, v in got.stats.items()) or "none"
        print(
            f"| {name} | {len(slices):,} | {busy:,} | {depth(got)} | {lanes:,} | {rows:,} | {under:,} "
            f"| {len(got.flows):,} | {stats} | {len(data) / max(len(slices), 1):.1f} |",
            flush=True,
        )
        print(f"  (import model: {took:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
