"""Trace size per span on the devserver's processes, and what gzip-compressing the blob costs and saves.

For each devserver process kind in ``--processes`` (default small, typical, large, wide), this starts
``trace-worker devserver`` as a subprocess and runs ``trace-worker generate`` (another subprocess)
twice: ``--span-types thread`` and ``--span-types async``. It reports the whole file's bytes divided by
the process's thread spans (resp. async spans): header, descriptors and interned data included.

Then, per file, gzip at ``--level`` (default: the ``blob_compress_level`` setting, 1, as the worker
uses when a request asks for ``compress: "gzip"``): the compressed size, the ratio and the CPU time of
compressing (``time.process_time`` of this process, one core), as MB of trace per CPU second.

    .venv/bin/python -m bench.bench_bytes
    .venv/bin/python -m bench.bench_bytes --processes small,typical --level 6

Write the machine's load (``uptime``) beside the figures: the devserver shares the machine's cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests.support.devserver import run_devserver_subprocess
from worker.devserver import Lake, LakeConfig
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    kind: str
    span_types: str
    spans: int
    size: int
    gz_size: int
    gz_cpu_s: float


def _generate(url: str, process_id: str, span_types: str, out: Path) -> None:
    argv = [sys.executable, "-m", "worker", "generate", "--flightsql", url, "--quiet"]
    argv += ["--process-id", process_id, "--span-types", span_types, "-o", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "TRACE_WORKER_FLIGHTSQL_TOKEN"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"generate failed ({done.returncode}):\n{done.stderr}")


def _gzip(path: Path, level: int) -> tuple[int, float]:
    """Compressed size and CPU seconds, streaming in 1 MiB pieces as the blob writer does."""
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    size = 0
    started = time.process_time()
    with path.open("rb") as f:
        while piece := f.read(1 << 20):
            size += len(comp.compress(piece))
    size += len(comp.flush())
    return size, time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", default="small,typical,large,wide")
    parser.add_argument("--level", type=int, default=Settings().blob_compress_level)
    args = parser.parse_args(argv)
    kinds = tuple(args.processes.split(","))
    lake = Lake(LakeConfig(processes=kinds))
    rows: list[Row] = []
    with (
        run_devserver_subprocess(["--processes", ",".join(kinds)]) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for process in lake.processes:
            for span_types, spans in (
                ("thread", process.thread_span_count),
                ("async", process.async_span_count),
            ):
                out = Path(tmp) / f"{process.kind}-{span_types}.pftrace"
                _generate(server.url, process.process_id, span_types, out)
                gz_size, gz_cpu = _gzip(out, args.level)
                rows.append(Row(process.kind, span_types, spans, out.stat().st_size, gz_size, gz_cpu))
                out.unlink()
        server.terminate()
    gz = f"gzip -{args.level}"
    print(f"| process | span types | spans | bytes | bytes/span | {gz} bytes/span | ratio | {gz} MB/CPU-s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r.size / 1e6 / r.gz_cpu_s if r.gz_cpu_s > 0 else float("inf")
        print(
            f"| {r.kind} | {r.span_types} | {r.spans:,} | {r.size:,} | {r.size / r.spans:.1f} "
            f"| {r.gz_size / r.spans:.1f} | {r.size / r.gz_size:.2f} | {rate:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
