"""Fault-suite fixtures: worker processes, moto S3, and a devserver with mixed process sizes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.devserver import small_lake, start_devserver
from tests.support.s3 import moto_s3, s3_bucket  # noqa: F401 - fixtures
from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture
from worker.devserver import DevServer


@pytest.fixture(scope="module")
def mixed_devserver() -> Iterator[DevServer]:
    """Small (10k spans), wide (15k spans over 64 threads) and typical (100k spans) processes."""
    with start_devserver(small_lake(processes=("small", "wide", "typical"), scale=0.5)) as server:
        yield server
