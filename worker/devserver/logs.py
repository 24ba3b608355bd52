"""Log entries, generated block by block: a block of entries per equal time window (WindowPlan)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from worker.devserver.windows import WindowPlan

__all__ = ["LogBlock", "generate_block"]

_TEMPLATES = pa.array(
    [
        "request served in",
        "cache miss for key",
        "retrying connection, attempt",
        "frame budget exceeded by",
        "flushed telemetry blocks:",
        "loaded asset id",
        "slow query took",
        "worker pool resized to",
    ],
    pa.utf8(),
)
#: Micromegas levels: 1=Fatal, 2=Error, 3=Warn, 4=Info, 5=Debug, 6=Trace.
_LEVEL_P = np.array([0.001, 0.02, 0.08, 0.6, 0.2, 0.099])


@dataclass(frozen=True)
class LogBlock:
    time: np.ndarray  # int64, sorted
    level: np.ndarray  # int32
    target_index: np.ndarray  # int32
    msg: pa.Array  # utf8


def generate_block(rng: np.random.Generator, plan: WindowPlan, block: int, target_count: int) -> LogBlock:
    n = plan.block_item_count(block)
    begin, _ = plan.block_window(block)
    time = np.sort(begin + np.floor(rng.random(n) * plan.window_ns).astype(np.int64))
    level = (rng.choice(6, size=n, p=_LEVEL_P) + 1).astype(np.int32)
    template = pc.take(_TEMPLATES, pa.array(rng.integers(0, len(_TEMPLATES), size=n)))
    value = pc.cast(pa.array(rng.integers(1, 100_000, size=n)), pa.utf8())
    msg = pc.binary_join_element_wise(template, value, " ")
    return LogBlock(
        time=time,
        level=level,
        target_index=rng.integers(0, target_count, size=n).astype(np.int32),
        msg=msg,
    )
