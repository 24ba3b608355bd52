"""Deterministic vocabularies for the synthetic lake: function names with their target, file and line.

Modelled on how a Rust program instrumented with Micromegas's ``#[span_fn]`` looks in the views:
the name is the function path, the target its module, the file the source file, the line where the
function starts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

__all__ = ["ASYNC_NAMES", "NameTable", "name_table"]

_MODULES = (
    "engine::render", "engine::physics", "engine::audio", "net::http", "net::grpc", "db::pool",
    "db::query", "cache::lru", "io::fs", "io::compress", "ui::layout", "ui::widgets", "game::ai",
    "game::world", "scripting::vm", "telemetry::sink", "scheduler::jobs", "assets::loader",
)  # fmt: skip
_VERBS = (
    "update", "draw", "compute", "resolve", "parse", "encode", "decode", "flush", "load", "store",
    "merge", "split", "visit", "apply", "build", "sort", "filter", "reduce", "dispatch", "poll",
)  # fmt: skip
_NOUNS = (
    "mesh", "frame", "batch", "request", "response", "row", "index", "page", "chunk", "tile",
    "node", "edge", "buffer", "texture", "shader", "packet", "entity", "query_plan", "span", "event",
)  # fmt: skip

#: Async span names from Micromegas's telemetry generator and typical services.
ASYNC_NAMES = (
    "async_operation", "nested_async_operation", "multi_threaded_async_work", "async_subtask",
    "concurrent_async_task", "prepare_async_operation", "execute_async_operation",
    "cleanup_async_operation", "database_migration", "cache_warmup", "data_processing",
    "user_workflow", "user_validation", "user_processing", "database_query", "api_call",
    "file_upload", "batch_processing_operation", "quick_processing", "cache_check", "validation",
    "computation", "named_quick_operation",
)  # fmt: skip


@dataclass(frozen=True)
class NameTable:
    """Parallel arrays: entry ``i`` is one instrumented function."""

    names: pa.Array  # utf8, distinct
    targets: pa.Array  # utf8, distinct modules
    target_index: np.ndarray  # int32 per name: its module in ``targets``
    filenames: pa.Array  # utf8, distinct files
    filename_index: np.ndarray  # int32 per name: its file in ``filenames``
    lines: np.ndarray  # uint32 per name
    hashes: np.ndarray  # uint32 per name, crc32 of the name (stands for Micromegas's span hash)

    def __len__(self) -> int:
        return len(self.names)


def _crc(values: list[str]) -> np.ndarray:
    return np.array([zlib.crc32(v.encode()) for v in values], dtype=np.uint32)


def name_table(
    seed: int,
    count: int,
    extra: tuple[str, ...] = (),
    extra_target: str = "micromegas::async",
    extra_file: str = "src/generator.rs",
) -> NameTable:
    """``count`` distinct functions chosen from module x verb x noun, then ``extra`` names.

    ``extra`` names (async span names, thread root names) get ``extra_target`` and ``extra_file``.

    Built once per process (a few thousand entries at most), so a Python loop is fine here.
    """
    rng = np.random.default_rng([seed, 7])
    total = len(_MODULES) * len(_VERBS) * len(_NOUNS)
    picks = rng.choice(total, size=min(count, total), replace=False)
    names: list[str] = []
    targets: list[str] = []
    files: list[str] = []
    for p in picks.tolist():
        module = _MODULES[p % len(_MODULES)]
        verb = _VERBS[(p // len(_MODULES)) % len(_VERBS)]
        noun = _NOUNS[p // (len(_MODULES) * len(_VERBS))]
        names.append(f"{module}::{verb}_{noun}")
        targets.append(module)
        files.append("src/" + module.replace("::", "/") + ".rs")
    for name in extra:
        names.append(name)
        targets.append(extra_target)
        files.append(extra_file)
    lines = rng.integers(10, 4000, size=len(names)).astype(np.uint32)
    target_dict = pa.array(targets, pa.utf8()).dictionary_encode()
    file_dict = pa.array(files, pa.utf8()).dictionary_encode()
    return NameTable(
        names=pa.array(names, pa.utf8()),
        targets=target_dict.dictionary,
        target_index=target_dict.indices.to_numpy().astype(np.int32),
        filenames=file_dict.dictionary,
        filename_index=file_dict.indices.to_numpy().astype(np.int32),
        lines=lines,
        hashes=_crc(names),
    )
