"""A timeline cut into equal windows, one per block of rows: how async events and log entries are
laid out, so that a time range maps to the few blocks it needs without generating the others."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WindowPlan"]


@dataclass(frozen=True)
class WindowPlan:
    """``items`` rows in blocks of ``block_items``, block ``b`` covering the b-th equal window of
    [begin_ns, end_ns]."""

    items: int
    block_items: int
    begin_ns: int
    #: The process's last time: what would fall after it is not recorded.
    end_ns: int

    @property
    def block_count(self) -> int:
        return -(-self.items // self.block_items) if self.items else 0

    @property
    def window_ns(self) -> int:
        return max(1, (self.end_ns - self.begin_ns) // max(1, self.block_count))

    def block_window(self, block: int) -> tuple[int, int]:
        begin = self.begin_ns + block * self.window_ns
        return begin, begin + self.window_ns

    def block_item_count(self, block: int) -> int:
        return min(self.block_items, self.items - block * self.block_items)
