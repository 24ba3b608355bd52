"""Fixtures of the conformance tests: clients in other languages against a real worker.

The Node client's dependency (npm ``ioredis``) is installed into ``tests/conformance/node/
node_modules`` by ``scripts/dev setup`` or, when missing, here (``npm ci``, from the lock file).
Where node is not installed the Node tests are skipped, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.devserver import start_devserver
from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture
from worker.devserver import DevServer, Lake, LakeConfig

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the client's npm packages installed."""
    binary = shutil.which("node")
    if binary is None:
        pytest.skip(
            "node is not installed (apt-get install nodejs npm): the Node conformance client cannot run"
        )
    if not (NODE_DIR / "node_modules" / "ioredis").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install the Node client's ioredis package")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=600
        )
    return binary


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    lake = Lake(LakeConfig(seed=42, processes=("small", "large"), large_spans=2_000_000))
    with start_devserver(lake) as server:
        yield server
