"""The gateway: an HTTP API and a web page over trace jobs (``trace-worker gateway``, docs/GATEWAY.md).

A requester of the wire contract like any other: it submits and follows jobs through Redis with
the client library (:mod:`contracts.client`) and reads process metadata, statistics and log lines
from the Flight SQL service (:mod:`worker.source.catalog`). It never builds a trace itself.
"""

from __future__ import annotations

from worker.gateway.app import create_app

__all__ = ["create_app"]
