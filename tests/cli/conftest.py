"""Fixtures of the command-line tests."""

from tests.support.worker_process import spawn_worker  # noqa: F401 - fixture
