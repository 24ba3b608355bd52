"""Sustained load, short form (about 15 s of load): 20 concurrent requesters against one worker process.
Every job succeeds, latencies and memory are reported, and every job's keys expire after the
job TTL. The long form with the figures is bench/load_service.py (docs/RELIABILITY.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.load import run_load
from tests.support.devserver import run_devserver_subprocess
from tests.support.redis_server import RedisServer
from worker.devserver import Lake, LakeConfig


def test_sustained_load_short(redis_server: RedisServer, tmp_path: Path) -> None:
    config = LakeConfig(seed=42, scale=0.5, processes=("small", "wide"))
    pids = [p.process_id for p in Lake(config).processes]  # planning only: cheap, same ids as the server
    with run_devserver_subprocess(["--processes", "small,wide", "--scale", "0.5"]) as server:
        report = asyncio.run(
            run_load(redis_server.url, server.url, pids, tmp_path / "blobs", tmp_path / "w.log", seconds=15)
        )
    summary = report.summary()
    print(f"load: {summary}")
    assert report.jobs >= 40 and report.failed == 0
    assert len(report.first_chunk_ms) == report.jobs == len(report.done_ms)
    assert report.job_keys_done > 0  # the last jobs' streams and state hashes, before expiry
    assert report.job_keys_expired == 0  # every job's keys expired after job_ttl_s
    assert report.requests_left == 0  # answered requests leave the request stream
    assert len(report.rss) >= 20


@pytest.mark.long
@pytest.mark.timeout(1200)
def test_sustained_load_long(redis_server: RedisServer, tmp_path: Path) -> None:
    """Three minutes of load: no failure, and the worker's RSS flat (last third within 10% of the
    middle third)."""
    config = LakeConfig(seed=42, scale=0.5, processes=("small", "wide"))
    pids = [p.process_id for p in Lake(config).processes]
    with run_devserver_subprocess(["--processes", "small,wide", "--scale", "0.5"]) as server:
        report = asyncio.run(
            run_load(redis_server.url, server.url, pids, tmp_path / "blobs", tmp_path / "w.log", seconds=180)
        )
    print(f"load: {report.summary()}")
    assert report.failed == 0 and report.job_keys_expired == 0
    assert report.rss_ratio() < 1.10, report.rss
