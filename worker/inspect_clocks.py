"""Packet timestamps to trace time, by Perfetto's clock rules: the one place ``inspect`` resolves them.

Source of the rules: Perfetto's trace processor (``proto_trace_reader.cc`` and ``clock_synchronizer``,
v58; summarised in shared/reference/perfetto.md §3.7 and §8):

- A packet's clock is its ``timestamp_clock_id``, else the ``TracePacketDefaults.timestamp_clock_id`` of
  its sequence's current generation (defaults are incremental state: a CLEARED packet drops them), else
  none: the timestamp is then already in trace time.
- The trace clock is the ``primary_trace_clock`` of a ClockSnapshot, BOOTTIME (6) by default. A timestamp
  on the trace clock is taken as is.
- Clock ids 64-127 are scoped to one ``trusted_packet_sequence_id``. A ClockSnapshot declares a clock's
  ``unit_multiplier_ns`` and ``is_incremental`` (incremental only for sequence-scoped clocks; a clock
  keeps the properties it was first declared with).
- On an **incremental** clock each packet's ``timestamp`` is a delta (in units) from the previous value
  of that clock; each ClockSnapshot that contains the clock sets that value to the snapshot's timestamp.
  A packet whose clock cannot be converted does not move it.
- Any other clock is converted through snapshots: from the latest snapshot (of a group of snapshots over
  the same clocks) whose time on the source clock is at or before the value, the offset to the other
  clock; chains of such hops are searched breadth first (at most 4 hops). A clock no snapshot connects to
  the trace clock cannot be converted: Perfetto drops those packets (``clock_sync_failure_*``).
- A packet without a timestamp gets the latest timestamp seen so far.

Perfetto defers packets it cannot convert until the end of the file (a later snapshot may still resolve
them); ``inspect`` keeps memory flat and resolves only with the snapshots read so far.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["BOOTTIME", "REALTIME", "ClockError", "Clocks", "Resolved"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

REALTIME = 1
BOOTTIME = 6
#: A clock in Perfetto's clock graph: (sequence id for clocks 64-127, else 0; clock id).
Key = tuple[int, int]
_MAX_HOPS = 4


def is_sequence_clock(clock_id: int) -> bool:
    return 64 <= clock_id < 128


class ClockError(ValueError):
    """A ClockSnapshot Perfetto rejects (its message says why)."""


@dataclass
class _Domain:
    unit: int = 1
    incremental: bool = False
    last_ns: int = 0  # incremental clocks: the current absolute value (ns)


@dataclass
class _Group:
    """Snapshots over one set of clocks, in file order: each clock's time (ns) per snapshot."""

    times: dict[Key, list[int]] = field(default_factory=dict)


@dataclass
class Resolved:
    """Trace times of a run of packets.

    ts: trace time (ns) per packet (0 where not ``ok``). ok: resolved. unresolved: the clocks (one entry
    each, first packet position) that could not be converted.
    """

    ts: I64
    ok: B
    unresolved: list[tuple[Key, int]]


class Clocks:
    """Clock state of one trace, read in file order (snapshots, then packets, as they come)."""

    def __init__(self) -> None:
        self.trace_clock: Key = (0, BOOTTIME)
        self.domains: dict[Key, _Domain] = {}
        self.groups: dict[frozenset[Key], _Group] = {}
        self.edges: dict[Key, list[tuple[Key, frozenset[Key]]]] = {}
        self.non_monotonic: set[Key] = set()
        self.latest = 0
        self._converted = False
        self._paths: dict[Key, list[tuple[Key, Key, frozenset[Key]]] | None] = {}

    @staticmethod
    def key(seq: int, clock_id: int) -> Key:
        return (seq if is_sequence_clock(clock_id) else 0, clock_id)

    def snapshot(self, seq: int, clocks: Sequence[tuple[int, int, int, bool]], primary: int | None) -> None:
        """Add a ClockSnapshot of sequence ``seq``: (clock id, timestamp, unit_multiplier_ns, incremental).

        Raises:
            ClockError: the snapshot is one Perfetto rejects (it then ignores it too).
        """
        if primary and not self._converted:
            self.trace_clock = (0, primary)
        keys = [self.key(seq, c[0]) for c in clocks]
        if len(set(keys)) != len(keys):
            raise ClockError("a clock appears twice in one ClockSnapshot")
        for k, (_, _, given_unit, incremental) in zip(keys, clocks, strict=True):
            unit = given_unit or 1
            if is_sequence_clock(k[1]) and not seq:
                raise ClockError(
                    f"sequence-scoped clock {k[1]} in a packet without trusted_packet_sequence_id"
                )
            dom = self.domains.get(k)
            if dom is None:
                if incremental and k[0] == 0:
                    raise ClockError(f"clock {k[1]} is global and cannot be incremental")
                dom = self.domains[k] = _Domain(unit, incremental)
            elif (dom.unit, dom.incremental) != (unit, incremental):
                raise ClockError(f"clock {k[1]} redeclared with another unit or incremental flag")
            if k == self.trace_clock and dom.unit != 1:
                raise ClockError("the trace clock must count nanoseconds")
        group_key = frozenset(keys)
        group = self.groups.setdefault(group_key, _Group({k: [] for k in keys}))
        for k, c in zip(keys, clocks, strict=True):
            dom = self.domains[k]
            ns = c[1] * dom.unit
            dom.last_ns = ns
            times = group.times[k]
            if times and ns < times[-1]:
                self.non_monotonic.add(k)  # Perfetto no longer converts from it
            times.append(ns)
        for a in keys:
            for b in keys:
                if a != b and (b, group_key) not in self.edges.setdefault(a, []):
                    self.edges[a].append((b, group_key))
        self._paths.clear()

    def _path(self, src: Key) -> list[tuple[Key, Key, frozenset[Key]]] | None:
        """The shortest chain of snapshot hops from ``src`` to the trace clock, or None."""
        if src in self._paths:
            return self._paths[src]
        target = self.trace_clock
        found: list[tuple[Key, Key, frozenset[Key]]] | None = None
        queue: deque[tuple[Key, list[tuple[Key, Key, frozenset[Key]]]]] = deque([(src, [])])
        seen = {src}
        while queue and found is None:
            node, hops = queue.popleft()
            if len(hops) >= _MAX_HOPS or node in self.non_monotonic:
                continue
            for nxt, group in self.edges.get(node, []):
                path = [*hops, (node, nxt, group)]
                if nxt == target:
                    found = path
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append((nxt, path))
        self._paths[src] = found
        return found

    def _convert(self, src: Key, ns: I64) -> I64:
        for a, b, group in self._path(src) or []:
            times = self.groups[group].times
            ta = np.asarray(times[a], dtype=np.int64)
            tb = np.asarray(times[b], dtype=np.int64)
            at = np.maximum(np.searchsorted(ta, ns, side="right") - 1, 0)
            ns = ns + (tb[at] - ta[at])
        return ns

    def resolve(self, seq: I64, clock: I64, raw: U64, has_ts: B) -> Resolved:
        """Trace times of consecutive packets (in file order) of the sequences ``seq``.

        Args:
            seq: trusted_packet_sequence_id per packet (0 when it has none).
            clock: the packet's clock id after defaults (0: none, the timestamp is in trace time).
            raw: the ``timestamp`` field as written (uint64).
            has_ts: whether the packet has a timestamp; packets without get the latest time before them.
        """
        n = len(raw)
        value = raw.view(np.int64).copy()
        ok = np.ones(n, dtype=bool)
        unresolved: list[tuple[Key, int]] = []
        timed = has_ts & (clock != 0)
        if timed.any():
            seq_part = np.where((clock >= 64) & (clock < 128), seq, 0)
            # One int per (sequence, clock): clock ids are uint32 and sequence ids uint32.
            key = np.where(timed, (seq_part << 32) | clock, -1)
            keys = key[timed]
            distinct = keys[:1] if (keys == keys[0]).all() else np.unique(keys)
            for kv in distinct.tolist():
                k = (kv >> 32, kv & 0xFFFFFFFF)
                rows = np.flatnonzero(key == kv)
                if k == self.trace_clock:
                    continue
                dom = self.domains.get(k)
                if dom is None or self._path(k) is None:
                    ok[rows] = False
                    unresolved.append((k, int(rows[0])))
                    continue
                if dom.incremental:
                    ns = dom.last_ns + np.cumsum(value[rows] * dom.unit)
                    dom.last_ns = int(ns[-1])
                else:
                    ns = value[rows] * dom.unit
                value[rows] = self._convert(k, ns)
            self._converted = True
        # Packets without a timestamp: the latest time so far (running maximum in file order).
        known = np.where(has_ts & ok, value, np.iinfo(np.int64).min)
        running = np.maximum(np.maximum.accumulate(known), self.latest) if n else known
        value = np.where(has_ts, value, running)
        if n:
            self.latest = int(running[-1])
        value[~ok] = 0
        return Resolved(value, ok, unresolved)

    def resolve_one(self, seq: int, clock: int, raw: int, has_ts: bool) -> tuple[int, bool]:
        """``resolve`` for a single packet: (trace time, resolved)."""
        got = self.resolve(
            np.array([seq], np.int64),
            np.array([clock], np.int64),
            np.array([raw], np.uint64),
            np.array([has_ts]),
        )
        return int(got.ts[0]), bool(got.ok[0])
