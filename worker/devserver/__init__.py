"""Development Flight SQL server with a synthetic Micromegas-like telemetry lake.

Plays the other side of trace-worker's Flight SQL source: it imports nothing from the rest of
``worker`` (tests/test_layers.py), so it cannot hide a client bug by sharing code.

Example::

    from worker.devserver import DevServer, Lake, LakeConfig

    with DevServer(Lake(LakeConfig(processes=("small",))), mode="micromegas") as server:
        print(server.url, server.lake.processes[0].process_id)
"""

from __future__ import annotations

from worker.devserver.lake import PROCESS_KINDS, Lake, LakeConfig, LakeProcess, LakeStream
from worker.devserver.schemas import SchemaOptions
from worker.devserver.server import DevServer, Mode
from worker.devserver.views import async_events, log_entries, measures, thread_spans

__all__ = [
    "PROCESS_KINDS",
    "DevServer",
    "Lake",
    "LakeConfig",
    "LakeProcess",
    "LakeStream",
    "Mode",
    "SchemaOptions",
    "async_events",
    "log_entries",
    "measures",
    "thread_spans",
]
