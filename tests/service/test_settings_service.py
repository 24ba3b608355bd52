"""Service settings are checked when built: a bad combination stops the worker at start."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from worker.settings import Settings


def test_heartbeat_must_fit_in_the_lease() -> None:
    with pytest.raises(ValidationError, match="HEARTBEAT_S"):
        Settings(_env_file=None, lease_s=10, heartbeat_s=6)
    assert Settings(_env_file=None, lease_s=10, heartbeat_s=5).heartbeat_s == 5


def test_blob_url_scheme_and_consumer_name() -> None:
    with pytest.raises(ValidationError, match="blob_url"):
        Settings(_env_file=None, blob_url="ftp://x")
    default = Settings(_env_file=None).consumer_name
    assert default.endswith(f"-{os.getpid()}")
    assert Settings(_env_file=None, worker_consumer="pod-7").consumer_name == "pod-7"
    with pytest.raises(ValidationError):
        Settings(_env_file=None, worker_consumer="has space")
