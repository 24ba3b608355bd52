"""Every benchmark behind docs/PERFORMANCE.md, one after another, in one sitting.

Each benchmark runs as its own subprocess (``python -m bench.<name> ARGS``); its markdown output goes
to ``OUT/<label>.md`` together with the command, the wall time and the machine's load average
(``os.getloadavg()``: 1, 5 and 15 min) before and after it, and ``OUT/sitting.md`` lists them all.
A benchmark that fails is recorded as failed (exit code and the tail of its stderr) and the sitting
goes on, so one broken bench does not cost the others' figures.

    .venv/bin/python -m bench.sitting --out /tmp/sitting          # everything (~20-30 min on 2 cores)
    .venv/bin/python -m bench.sitting --out /tmp/sitting --only engine,service
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: label -> (module, arguments), in the order they run.
BENCHES: dict[str, tuple[str, list[str]]] = {
    "engine": ("bench.bench_engine", []),
    "engine-logs": ("bench.bench_engine", ["--only-logs"]),
    "bytes": ("bench.bench_bytes", []),
    "lanes": ("bench.bench_lanes", []),
    "devserver": ("bench.bench_devserver", []),
    "devserver-memory": (
        "bench.bench_devserver",
        ["--in-memory", "--spans", "5000000", "--preserve-dictionary", "--parallel", "4"],
    ),
    "source": ("bench.bench_source", []),
    "generate": ("bench.bench_generate", ["--stages"]),
    "generate-memory": ("bench.bench_generate", ["--sizes", "2500000,5000000,10000000"]),
    "service": ("bench.bench_service", ["--large-runs", "2", "--small-rounds", "2"]),
    # The service worker's peak RSS against trace size (the large job alone, at two sizes).
    "service-memory-2.5M": ("bench.bench_service", ["--large-only", "--large-spans", "2500000"]),
    "service-memory-10M": ("bench.bench_service", ["--large-only", "--large-spans", "10000000"]),
    "service-overhead": ("bench.bench_service_overhead", ["--jobs", "200", "--rounds", "2"]),
    "inspect": ("bench.bench_inspect", ["--runs", "2"]),
    "client": ("bench.bench_client", []),
    "blob": ("bench.bench_blob", []),
    "cluster": ("bench.bench_cluster", ["--workers", "1,2", "--small", "100", "--large", "2"]),
    "cluster-one-server": (
        "bench.bench_cluster",
        ["--one-server", "--workers", "1,2", "--small", "100", "--large", "2"],
    ),
}


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(label: str, out: Path) -> tuple[str, int, float, str, str]:
    """Run one benchmark; returns (label, exit code, wall s, load before, load after)."""
    module, args = BENCHES[label]
    argv = [sys.executable, "-m", module, *args]
    before = _load()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = _load()
    command = f".venv/bin/python -m {module} {' '.join(args)}".rstrip()
    lines = [
        f"# {label}",
        "",
        f"`{command}`: exit {proc.returncode}, {wall:.1f} s wall, load (1/5/15 min) {before} -> {after}",
        "",
        proc.stdout,
    ]
    if proc.returncode != 0:
        lines += ["", "stderr (tail):", "```", *proc.stderr.splitlines()[-40:], "```"]
    (out / f"{label}.md").write_text("\n".join(lines))
    return label, proc.returncode, wall, before, after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    parser.add_argument("--only", default=",".join(BENCHES), help="labels to run, comma-separated")
    args = parser.parse_args()
    labels = [s for s in args.only.split(",") if s]
    unknown = [s for s in labels if s not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    head = [
        f"# Sitting of {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"commit {_commit()}",
        "",
        "| bench | exit | wall s | load before | load after |",
        "|---|---:|---:|---|---|",
    ]
    summary = args.out / "sitting.md"
    summary.write_text("\n".join(head) + "\n")
    failed = 0
    for label in labels:
        name, code, wall, before, after = run(label, args.out)
        failed += code != 0
        with summary.open("a") as f:
            f.write(f"| {name} | {code} | {wall:.1f} | {before} | {after} |\n")
        print(f"{name}: exit {code}, {wall:.1f} s, load {before} -> {after}", flush=True)
    return 1 if failed else 0


def _commit() -> str:
    argv = ["git", "rev-parse", "--short", "HEAD"]
    proc = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
