"""Shared fixtures. Real servers on free loopback ports; no test depends on a service the machine runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()
