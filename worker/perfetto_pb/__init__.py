"""Python classes generated from ``protos/perfetto_trace.proto`` (``scripts/dev protos``).

Used by ``trace-worker inspect``, the tests and the benchmark's naive baseline; the engine writes wire
bytes itself and does not import them.
"""

from worker.perfetto_pb import perfetto_trace_pb2 as pb

__all__ = ["pb"]
