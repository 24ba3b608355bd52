"""The synthetic telemetry lake: processes, their streams, and plans to generate their data.

Everything is deterministic from :class:`LakeConfig` (seed, scale, which processes). Building a
:class:`Lake` only plans: per stream it draws call-tree sizes and time slots (small arrays), so
counts and time bounds are exact while no span exists yet. Rows are generated on demand, block by
block, from ``(seed, process, stream, block)`` (see :mod:`worker.devserver.threads`,
:mod:`worker.devserver.asyncgen`, :mod:`worker.devserver.logs`); :mod:`worker.devserver.views`
turns blocks into Arrow record batches.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field

import numpy as np

from worker.devserver import threads
from worker.devserver.names import ASYNC_NAMES, NameTable, name_table
from worker.devserver.windows import WindowPlan

__all__ = [
    "DEFAULT_PROCESSES",
    "PROCESS_KINDS",
    "Lake",
    "LakeConfig",
    "LakeProcess",
    "LakeStream",
    "ProcessKind",
]

#: 2026-11-01T00:00:00Z: the lake's first process starts here.
EPOCH_NS = 1_793_491_200_000_000_000


@dataclass(frozen=True)
class ProcessKind:
    """The shape of one synthetic process at scale 1."""

    kind: str
    exe: str
    thread_spans: int
    threads: int
    async_spans: int
    log_entries: int
    computer: str
    username: str
    measures: int = 0


PROCESS_KINDS: dict[str, ProcessKind] = {
    k.kind: k
    for k in (
        ProcessKind(
            "small", "/usr/local/bin/telemetry-generator", 10_000, 5, 2_000, 500, "dev-box-1", "alice", 5_000
        ),
        ProcessKind(
            "typical", "/opt/game/bin/game-server", 200_000, 12, 20_000, 5_000, "game-7", "svc-game", 100_000
        ),
        ProcessKind(
            "large",
            "/opt/render/bin/render-node",
            5_000_000,
            16,
            250_000,
            20_000,
            "render-3",
            "svc-r",
            400_000,
        ),
        ProcessKind(
            "wide", "/opt/svc/bin/analytics-srv", 30_000, 64, 5_000, 1_000, "svc-12", "svc-a", 10_000
        ),
    )
}
DEFAULT_PROCESSES: tuple[str, ...] = ("small", "typical", "large")


@dataclass(frozen=True)
class LakeConfig:
    """What the lake holds. Same config, same rows, byte for byte.

    Attributes:
        seed: Root of every random draw.
        scale: Multiplies the span, async span, log and measure counts of every process.
        processes: Which process kinds to serve, in order (see :data:`PROCESS_KINDS`).
        large_spans: Thread spans of the ``large`` process, overriding ``scale`` for it (its async
            spans become ``large_spans // 20`` unless ``large_async_spans`` is given).
        large_async_spans: Async spans of the ``large`` process.
        block_rows: Target rows per generated thread-span block.
        async_block_spans: Async spans per generated block.
    """

    seed: int = 42
    scale: float = 1.0
    processes: tuple[str, ...] = DEFAULT_PROCESSES
    large_spans: int | None = None
    large_async_spans: int | None = None
    block_rows: int = 65_536
    async_block_spans: int = 32_768
    log_block_entries: int = 8_192
    measure_block_entries: int = 16_384

    def __post_init__(self) -> None:
        unknown = [p for p in self.processes if p not in PROCESS_KINDS]
        if unknown:
            raise ValueError(f"unknown process kinds {unknown}; known: {sorted(PROCESS_KINDS)}")
        if not self.processes:
            raise ValueError("a lake needs at least one process")
        if self.scale <= 0:
            raise ValueError("scale must be positive")
        if (
            self.block_rows < 1024
            or self.async_block_spans < 1
            or self.log_block_entries < 1
            or self.measure_block_entries < 1
        ):
            raise ValueError("block sizes too small")


def _uuid(*parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


@dataclass(frozen=True)
class LakeStream:
    """One stream of a process. Thread streams (tag ``cpu``) carry a :class:`threads.ThreadPlan`."""

    stream_id: str
    process_id: str
    index: int  # among the process's streams
    tags: tuple[str, ...]
    properties: dict[str, str]
    plan: threads.ThreadPlan | None = None
    thread_index: int = -1  # among the thread streams; -1 otherwise
    root_name_index: int = -1  # the synthetic root's entry in the process's span names

    @property
    def thread_name(self) -> str | None:
        return self.properties.get("thread-name")

    @property
    def thread_id(self) -> str | None:
        return self.properties.get("thread-id")

    @property
    def thread_span_count(self) -> int:
        return self.plan.rows if self.plan is not None else 0

    def block_id(self, seed: int, block: int) -> str:
        return _uuid(seed, self.stream_id, "block", block)


@dataclass(frozen=True)
class LakeProcess:
    """One process: identity, expected counts (exact) and the plans to generate its data.

    ``thread_span_count`` counts every row ``thread_spans`` serves over all thread streams,
    synthetic roots included; ``async_span_count`` counts spans (each has a ``begin`` event; some
    have no ``end``).
    """

    process_id: str
    index: int
    kind: str
    exe: str
    username: str
    computer: str
    begin_ns: int
    end_ns: int
    streams: list[LakeStream]
    span_names: NameTable  # function names, then one root name per thread stream
    async_names: NameTable
    async_plan: WindowPlan
    log_plan: WindowPlan
    log_stream_id: str
    measure_plan: WindowPlan
    metrics_stream_id: str
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def thread_streams(self) -> list[LakeStream]:
        return [s for s in self.streams if s.plan is not None]

    @property
    def thread_count(self) -> int:
        return len(self.thread_streams)

    @property
    def thread_span_count(self) -> int:
        return sum(s.thread_span_count for s in self.streams)

    @property
    def async_span_count(self) -> int:
        return self.async_plan.items

    @property
    def log_entry_count(self) -> int:
        return self.log_plan.items

    @property
    def measure_count(self) -> int:
        return self.measure_plan.items


def _thread_properties(i: int, count: int, tid_base: int) -> dict[str, str]:
    """Thread names and ids, with the defects real lakes have: unnamed threads, ids that collide
    exactly or in their low 32 bits (what a Perfetto tid keeps), a missing id."""
    tid = tid_base + i * 0x3_0000
    props: dict[str, str] = {}
    if i == 0:
        props["thread-name"] = "main"
    elif i % 4 != 3:
        props["thread-name"] = f"worker-{i}"
    if i == 2:
        tid = tid_base + 1 * 0x3_0000 + (1 << 32)  # same low 32 bits as thread 1
    if count >= 5 and i == count - 2:
        tid = tid_base + 1 * 0x3_0000  # exactly thread 1's id
    if not (count >= 4 and i == count - 1):
        props["thread-id"] = str(tid)
    return props


def _build_process(config: LakeConfig, index: int, kind: ProcessKind) -> LakeProcess:
    seed = config.seed
    rng = np.random.default_rng([seed, index, 0])
    process_id = _uuid(seed, "process", index, kind.kind)
    span_target = max(kind.threads * 2, round(kind.thread_spans * config.scale))
    async_spans = max(1, round(kind.async_spans * config.scale))
    if kind.kind == "large" and config.large_spans is not None:
        span_target = config.large_spans
        async_spans = config.large_spans // 20
    if kind.kind == "large" and config.large_async_spans is not None:
        async_spans = config.large_async_spans
    begin_ns = EPOCH_NS + index * 86_400_000_000_000 + int(rng.integers(0, 10**9))
    weights = rng.uniform(0.5, 1.5, size=kind.threads)
    weights[0] = 2.5  # the main thread works most
    per_thread = np.maximum(2, np.rint(span_target * weights / weights.sum())).astype(np.int64)

    tid_base = 139_900_000_000_000 + int(rng.integers(0, 2**20)) * 4096
    props = [_thread_properties(i, kind.threads, tid_base) for i in range(kind.threads)]
    root_names = tuple(p.get("thread-name") or f"thread-{p.get('thread-id', i)}" for i, p in enumerate(props))
    span_names = name_table(seed + index, 1500, root_names, "micromegas::thread", "src/thread.rs")
    root_base = len(span_names) - len(root_names)

    streams: list[LakeStream] = []
    for i in range(kind.threads):
        srng = np.random.default_rng([seed, index, 1, i])
        start = begin_ns + int(srng.integers(0, 1_000_000))
        plan = threads.plan_stream(srng, int(per_thread[i]), start, config.block_rows)
        streams.append(
            LakeStream(
                stream_id=_uuid(seed, process_id, "stream", i),
                process_id=process_id,
                index=i,
                tags=("cpu",),
                properties=props[i],
                plan=plan,
                thread_index=i,
                root_name_index=root_base + i,
            )
        )
    log_stream_id = _uuid(seed, process_id, "stream", "log")
    streams.append(LakeStream(log_stream_id, process_id, kind.threads, ("log",), {}))
    metrics_stream_id = _uuid(seed, process_id, "stream", "metrics")
    streams.append(LakeStream(metrics_stream_id, process_id, kind.threads + 1, ("metrics",), {}))
    end_ns = max(s.plan.end_ns for s in streams if s.plan is not None)
    return LakeProcess(
        process_id=process_id,
        index=index,
        kind=kind.kind,
        exe=kind.exe,
        username=kind.username,
        computer=kind.computer,
        begin_ns=begin_ns,
        end_ns=end_ns,
        streams=streams,
        span_names=span_names,
        async_names=name_table(seed + index + 1000, 40, ASYNC_NAMES),
        async_plan=WindowPlan(async_spans, config.async_block_spans, begin_ns, end_ns),
        log_plan=WindowPlan(
            max(1, round(kind.log_entries * config.scale)), config.log_block_entries, begin_ns, end_ns
        ),
        log_stream_id=log_stream_id,
        measure_plan=WindowPlan(
            max(1, round(kind.measures * config.scale)), config.measure_block_entries, begin_ns, end_ns
        ),
        metrics_stream_id=metrics_stream_id,
        properties={"version": "1.4.2", "build": "release", "kind": kind.kind},
    )


class Lake:
    """The synthetic lake for a config: processes and streams known up front, rows on demand."""

    def __init__(self, config: LakeConfig | None = None) -> None:
        self.config = config or LakeConfig()
        self.processes: list[LakeProcess] = [
            _build_process(self.config, i, PROCESS_KINDS[k]) for i, k in enumerate(self.config.processes)
        ]
        self._processes = {p.process_id: p for p in self.processes}
        self._streams = {s.stream_id: (p, s) for p in self.processes for s in p.streams}

    def process(self, process_id: str) -> LakeProcess | None:
        """The process with this id, or None."""
        return self._processes.get(process_id)

    def process_of_kind(self, kind: str) -> LakeProcess:
        """The first process of a kind (``"small"``, ``"typical"``, ...)."""
        for p in self.processes:
            if p.kind == kind:
                return p
        raise KeyError(f"no {kind!r} process in this lake")

    def stream(self, stream_id: str) -> tuple[LakeProcess, LakeStream] | None:
        """The stream with this id and its process, or None."""
        return self._streams.get(stream_id)

    def describe(self) -> str:
        """One line per process: id, exe, counts and time range (what the CLI prints)."""
        lines = []
        for p in self.processes:
            lines.append(
                f"{p.process_id}  {p.kind:<8} {p.exe}  threads={p.thread_count} "
                f"thread_spans={p.thread_span_count} async_spans={p.async_span_count} "
                f"log_entries={p.log_entry_count} measures={p.measure_count}  "
                f"{_rfc3339(p.begin_ns)} .. {_rfc3339(p.end_ns)}"
            )
        return "\n".join(lines)


def _rfc3339(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = np.datetime64(seconds, "s").astype(str)
    return f"{stamp}.{frac:09d}Z"


def properties_json(props: dict[str, str]) -> bytes:
    """A property map as the bytes stored in ``properties`` columns (JSON text, sorted keys)."""
    return json.dumps(props, sort_keys=True, separators=(",", ":")).encode()
