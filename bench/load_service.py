"""Sustained-load benchmark (long form of tests/faults/test_load.py): Redis, the devserver and one
worker process on loopback; many concurrent requesters for a bounded time; prints throughput,
p50/p99 latency to first chunk and to completion (Redis clock), worker RSS over time, Redis memory
per job live and once the jobs' keys expired (short job TTL), and what keys are left.

    .venv/bin/python -m bench.load_service [--seconds 300] [--requesters 20] [--max-jobs 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from tests.faults.load import run_load
from tests.support.devserver import run_devserver_subprocess
from tests.support.redis_server import RedisServer
from worker.devserver import Lake, LakeConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0, help="how long requests keep coming")
    parser.add_argument("--requesters", type=int, default=20, help="concurrent requesters")
    parser.add_argument("--max-jobs", type=int, default=100_000, help="stop after this many jobs")
    parser.add_argument("--job-ttl", type=int, default=10, help="job_ttl_s of the worker")
    args = parser.parse_args(argv)
    config = LakeConfig(seed=42, scale=0.5, processes=("small", "wide"))
    pids = [p.process_id for p in Lake(config).processes]
    redis = RedisServer().start()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="tw-load-") as tmp,
            run_devserver_subprocess(["--processes", "small,wide", "--scale", "0.5"]) as server,
        ):
            root = Path(tmp)
            report = asyncio.run(
                run_load(
                    redis.url,
                    server.url,
                    pids,
                    root / "blobs",
                    root / "worker.log",
                    seconds=args.seconds,
                    requesters=args.requesters,
                    max_jobs=args.max_jobs,
                    job_ttl_s=args.job_ttl,
                )
            )
    finally:
        redis.close()
    print(json.dumps(report.summary(), indent=2))
    step = max(1, len(report.rss) // 12)
    print("worker RSS over time (s, MiB):", [(round(t), round(r)) for t, r in report.rss[::step]])
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
