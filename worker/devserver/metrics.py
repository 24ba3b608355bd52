"""Measures, generated block by block: a block of samples per equal time window (WindowPlan).

Each process samples a fixed set of metrics (target, name, unit); each sample picks a metric and
reads a smooth curve of time plus noise, so the counter tracks look like real gauges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from worker.devserver.windows import WindowPlan

__all__ = ["METRICS", "MeasureBlock", "generate_block"]

#: (target, name, unit, base, amplitude) of each metric a process samples.
METRICS: tuple[tuple[str, str, str, float, float], ...] = (
    ("micromegas::metrics", "frame_time", "ns", 16_000_000.0, 4_000_000.0),
    ("micromegas::metrics", "memory_used", "bytes", 512.0 * 2**20, 64.0 * 2**20),
    ("app::net", "requests_in_flight", "count", 40.0, 30.0),
    ("app::net", "bytes_sent", "bytes", 1.0e6, 5.0e5),
    ("app::db", "query_latency", "ms", 12.0, 8.0),
    ("app::render", "cpu_usage", "percent", 55.0, 35.0),
)
TARGETS = pa.array([m[0] for m in METRICS], pa.utf8())
NAMES = pa.array([m[1] for m in METRICS], pa.utf8())
UNITS = pa.array([m[2] for m in METRICS], pa.utf8())
_BASE = np.array([m[3] for m in METRICS])
_AMP = np.array([m[4] for m in METRICS])
_PERIOD_NS = 7.0e9


@dataclass(frozen=True)
class MeasureBlock:
    time: np.ndarray  # int64, sorted
    metric: np.ndarray  # int32, index into METRICS
    value: np.ndarray  # float64


def generate_block(rng: np.random.Generator, plan: WindowPlan, block: int) -> MeasureBlock:
    n = plan.block_item_count(block)
    begin, _ = plan.block_window(block)
    time = np.sort(begin + np.floor(rng.random(n) * plan.window_ns).astype(np.int64))
    metric = rng.integers(0, len(METRICS), size=n).astype(np.int32)
    phase = (time - plan.begin_ns) / _PERIOD_NS * 2 * np.pi + metric
    value = _BASE[metric] + _AMP[metric] * (0.8 * np.sin(phase) + 0.2 * rng.standard_normal(n))
    return MeasureBlock(time=time, metric=metric, value=np.maximum(value, 0.0))
