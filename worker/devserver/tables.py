"""The small metadata tables (``processes``, ``streams``, ``blocks``) and the ``property_get`` UDF.

They are built once per server from the lake's plans (one ``blocks`` row per generated block of
a thread stream and of the log stream), so they are small even for a 20-million-span process.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pyarrow as pa
from datafusion import ScalarUDF, udf

from worker.devserver.lake import Lake, LakeProcess, LakeStream, properties_json
from worker.devserver.schemas import TS, blocks_schema, processes_schema, streams_schema

__all__ = ["MetadataTables", "property_get_udf"]

#: Ticks per second of the synthetic processes' TSC.
TSC_FREQUENCY = 2_500_000_000


def _props(values: list[bytes]) -> pa.Array:
    return pa.array(values, pa.binary()).dictionary_encode()


def _ticks(process: LakeProcess, ns: int) -> int:
    return (ns - process.begin_ns) * TSC_FREQUENCY // 1_000_000_000


class MetadataTables:
    """``processes``, ``streams`` and ``blocks`` of a lake, as Arrow tables."""

    def __init__(self, lake: Lake) -> None:
        self.processes = self._processes(lake)
        self.streams = self._streams(lake)
        self.blocks = self._blocks(lake)

    @staticmethod
    def _processes(lake: Lake) -> pa.Table:
        ps = lake.processes
        return pa.table(
            {
                "process_id": [p.process_id for p in ps],
                "exe": [p.exe for p in ps],
                "username": [p.username for p in ps],
                "realname": [p.username for p in ps],
                "computer": [p.computer for p in ps],
                "distro": ["Debian GNU/Linux 12"] * len(ps),
                "cpu_brand": ["Synthetic CPU @ 2.50GHz"] * len(ps),
                "tsc_frequency": [TSC_FREQUENCY] * len(ps),
                "start_time": pa.array([p.begin_ns for p in ps], pa.int64()).cast(TS),
                "start_ticks": [0] * len(ps),
                "insert_time": pa.array([p.begin_ns for p in ps], pa.int64()).cast(TS),
                "parent_process_id": [""] * len(ps),
                "properties": _props([properties_json(p.properties) for p in ps]),
                "last_update_time": pa.array([p.end_ns for p in ps], pa.int64()).cast(TS),
                "last_block_end_ticks": [_ticks(p, p.end_ns) for p in ps],
                "last_block_end_time": pa.array([p.end_ns for p in ps], pa.int64()).cast(TS),
            },
            schema=processes_schema(),
        )

    @staticmethod
    def _streams(lake: Lake) -> pa.Table:
        rows = [(p, s) for p in lake.processes for s in p.streams]
        return pa.table(
            {
                "stream_id": [s.stream_id for _, s in rows],
                "process_id": [p.process_id for p, _ in rows],
                "dependencies_metadata": [b""] * len(rows),
                "objects_metadata": [b""] * len(rows),
                "tags": [list(s.tags) for _, s in rows],
                "properties": _props([properties_json(s.properties) for _, s in rows]),
                "insert_time": pa.array([p.begin_ns for p, _ in rows], pa.int64()).cast(TS),
                "format": ["tracing"] * len(rows),
                "last_update_time": pa.array([p.end_ns for p, _ in rows], pa.int64()).cast(TS),
            },
            schema=streams_schema(),
        )

    @staticmethod
    def _stream_blocks(lake: Lake, p: LakeProcess, s: LakeStream) -> list[tuple[str, int, int, int]]:
        """(block_id, begin_ns, end_ns, nb_objects) of a stream's blocks."""
        seed = lake.config.seed
        if s.plan is not None:
            plan = s.plan
            return [
                (s.block_id(seed, b), *plan.block_bounds(b), plan.block_rows(b))
                for b in range(plan.block_count)
            ]
        if s.stream_id == p.log_stream_id:
            lp = p.log_plan
            return [
                (s.block_id(seed, b), *lp.block_window(b), lp.block_item_count(b))
                for b in range(lp.block_count)
            ]
        return []

    def _blocks(self, lake: Lake) -> pa.Table:
        cols: dict[str, list[object]] = {f.name: [] for f in blocks_schema()}
        for p in lake.processes:
            for s in p.streams:
                for block_id, begin, end, count in self._stream_blocks(lake, p, s):
                    values: dict[str, object] = {
                        "block_id": block_id,
                        "stream_id": s.stream_id,
                        "process_id": p.process_id,
                        "begin_time": begin,
                        "begin_ticks": _ticks(p, begin),
                        "end_time": end,
                        "end_ticks": _ticks(p, end),
                        "nb_objects": count,
                        "object_offset": 0,
                        "payload_size": count * 32,
                        "insert_time": end,
                        "streams.dependencies_metadata": b"",
                        "streams.objects_metadata": b"",
                        "streams.tags": list(s.tags),
                        "streams.properties": properties_json(s.properties),
                        "streams.insert_time": p.begin_ns,
                        "processes.start_time": p.begin_ns,
                        "processes.start_ticks": 0,
                        "processes.tsc_frequency": TSC_FREQUENCY,
                        "processes.exe": p.exe,
                        "processes.username": p.username,
                        "processes.realname": p.username,
                        "processes.computer": p.computer,
                        "processes.distro": "Debian GNU/Linux 12",
                        "processes.cpu_brand": "Synthetic CPU @ 2.50GHz",
                        "processes.insert_time": p.begin_ns,
                        "processes.parent_process_id": "",
                        "processes.properties": properties_json(p.properties),
                        "streams.format": "tracing",
                    }
                    for k, v in values.items():
                        cols[k].append(v)
        arrays = []
        for f in blocks_schema():
            if f.type == TS:
                arrays.append(pa.array(cols[f.name], pa.int64()).cast(TS))
            elif pa.types.is_dictionary(f.type):
                arrays.append(_props(cols[f.name]))  # type: ignore[arg-type]
            else:
                arrays.append(pa.array(cols[f.name], f.type))
        return pa.Table.from_arrays(arrays, schema=blocks_schema())


@lru_cache(maxsize=4096)
def _decode(value: bytes) -> dict[str, str]:
    decoded = json.loads(value) if value else {}
    return decoded if isinstance(decoded, dict) else {}


def _property_get(props: pa.Array, keys: pa.Array) -> pa.Array:
    """Per row: the value of ``key`` in the JSON property map, or NULL. Columnar over the
    dictionary: each distinct map is decoded once, then values are gathered by index."""
    if isinstance(props, pa.ChunkedArray):
        props = props.combine_chunks()
    if pa.types.is_dictionary(props.type):
        values, indices = props.dictionary, props.indices
    else:
        values, indices = props, pa.array(np.arange(len(props), dtype=np.int32))
    key_list = keys.unique().to_pylist()
    if len(key_list) == 1:  # the usual case: a literal key
        key = key_list[0]
        looked = pa.array([None if v is None else _decode(v).get(key) for v in values.to_pylist()], pa.utf8())
        return looked.take(indices)
    raw = values.take(indices).to_pylist()
    return pa.array(
        [None if v is None else _decode(v).get(k) for v, k in zip(raw, keys.to_pylist(), strict=True)],
        pa.utf8(),
    )


def property_get_udf() -> ScalarUDF:
    """``property_get(properties, key) -> utf8`` as Micromegas offers it."""
    return udf(
        _property_get,
        [pa.dictionary(pa.int32(), pa.binary()), pa.utf8()],
        pa.utf8(),
        "stable",
        name="property_get",
    )
