"""Cut a stream of whole packets into chunks of at most ``chunk_size`` bytes, only between packets.

Every chunk is therefore a valid ``Trace`` fragment and every prefix of chunks decodes. A packet larger
than ``chunk_size`` travels alone in a chunk of its own. Work is per chunk, not per packet: packet
boundaries are found with arithmetic (fixed-size rows) or a binary search (variable sizes).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Chunker"]


class Chunker:
    """Accumulates packets and hands out finished chunks."""

    def __init__(self, chunk_size: int) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.chunk_size = chunk_size
        self._parts: list[bytes | memoryview] = []
        self._size = 0
        self.chunks = 0
        self.bytes = 0

    def add(self, data: bytes | memoryview, sizes: npt.NDArray[np.int64] | int | None = None) -> list[bytes]:
        """Add packets; return the chunks that became complete.

        Args:
            data: whole packets, back to back.
            sizes: each packet's length (array), one length for all (int), or None for one packet.
        """
        total = len(data)
        if total == 0:
            return []
        out: list[bytes] = []
        view = memoryview(data)
        ends: npt.NDArray[np.int64] | None = None
        if sizes is not None and not isinstance(sizes, int):
            ends = np.cumsum(sizes, dtype=np.int64)
        start = 0
        while start < total:
            space = self.chunk_size - self._size
            stop = self._cut(start, space, total, sizes=sizes, ends=ends)
            if stop <= start:
                if self._size:
                    out.append(self._take())
                    continue
                stop = self._cut(start, 0, total, sizes=sizes, ends=ends, at_least_one=True)
            self._parts.append(view[start:stop])
            self._size += stop - start
            start = stop
            if self._size >= self.chunk_size:
                out.append(self._take())
        return out

    @staticmethod
    def _cut(
        start: int,
        space: int,
        total: int,
        *,
        sizes: npt.NDArray[np.int64] | int | None,
        ends: npt.NDArray[np.int64] | None,
        at_least_one: bool = False,
    ) -> int:
        """The furthest packet boundary at most ``space`` bytes after ``start`` (or the next one)."""
        if sizes is None:
            return total if at_least_one or total - start <= space else start
        if isinstance(sizes, int):
            rows = max(space // sizes, 1 if at_least_one else 0)
            return min(start + rows * sizes, total)
        assert ends is not None
        if at_least_one:
            return int(ends[np.searchsorted(ends, start, side="right")])
        i = int(np.searchsorted(ends, start + space, side="right"))
        return int(ends[i - 1]) if i > 0 and ends[i - 1] > start else start

    def _take(self) -> bytes:
        chunk = b"".join(self._parts)
        self._parts = []
        self._size = 0
        self.chunks += 1
        self.bytes += len(chunk)
        return chunk

    def flush(self) -> list[bytes]:
        """The last, partly filled chunk (if any)."""
        return [self._take()] if self._size else []
