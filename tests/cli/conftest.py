"""Fixtures of the command-line tests."""

from collections.abc import AsyncIterator

import pytest

from tests.support.processes import stop_tracked
from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
async def _reap_cli_processes() -> AsyncIterator[None]:
    """Every command-line process a test starts is stopped and reaped when the test ends."""
    yield
    await stop_tracked()
