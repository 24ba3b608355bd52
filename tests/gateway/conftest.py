"""Gateway test stack, shared by a module: redis-server, devserver, one worker and the gateway, all real,
on free loopback ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.devserver import start_devserver
from tests.support.gateway_process import GatewayProcess, run_gateway
from tests.support.redis_server import RedisServer
from tests.support.worker_process import stop_process, worker_env
from worker.devserver import DevServer, Lake, LakeConfig

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    redis: RedisServer
    devserver: DevServer
    gateway: GatewayProcess
    http: httpx.Client
    env: dict[str, str]

    @property
    def lake(self) -> Lake:
        return self.devserver.lake


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """small and typical processes for quick jobs, a 1M-span large one that is still running when a
    test cancels it."""
    work = tmp_path_factory.mktemp("gateway")
    redis = RedisServer().start()
    lake = Lake(LakeConfig(seed=42, processes=("small", "typical", "large"), large_spans=1_000_000))
    try:
        with start_devserver(lake) as devserver:
            env = worker_env(redis.url, devserver.url, (work / "blobs").as_uri())
            log = (work / "worker.log").open("wb")
            worker = subprocess.Popen(
                [sys.executable, "-m", "worker", "run", "--consumer", "gw-0"],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                with run_gateway(env) as gateway, httpx.Client(base_url=gateway.url, timeout=120) as http:
                    yield Stack(redis, devserver, gateway, http, env)
            finally:
                stop_process(worker)
                log.close()
    finally:
        redis.close()
