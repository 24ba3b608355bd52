"""Log entries, generated block by block: ``block_entries`` entries per equal time window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["LogBlock", "LogPlan", "generate_block"]

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
class LogPlan:
    entries: int
    block_entries: int
    begin_ns: int
    end_ns: int

    @property
    def block_count(self) -> int:
        return -(-self.entries // self.block_entries) if self.entries else 0

    @property
    def window_ns(self) -> int:
        return max(1, (self.end_ns - self.begin_ns) // max(1, self.block_count))

    def block_window(self, block: int) -> tuple[int, int]:
        begin = self.begin_ns + block * self.window_ns
        return begin, begin + self.window_ns

    def block_entry_count(self, block: int) -> int:
        return min(self.block_entries, self.entries - block * self.block_entries)


@dataclass(frozen=True)
class LogBlock:
    time: np.ndarray  # int64, sorted
    level: np.ndarray  # int32
    target_index: np.ndarray  # int32
    msg: pa.Array  # utf8


def generate_block(rng: np.random.Generator, plan: LogPlan, block: int, target_count: int) -> LogBlock:
    n = plan.block_entry_count(block)
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
