"""Fixtures of the deployment tests."""

from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture
