"""The interning fixed-cost cuts (commits 8047780..b6027f9) write the same bytes and ids as the
interning of 0588589, on random dictionaries: nulls (rows and entries), duplicates, "", key widths,
string kinds, slices, shared and resent dictionaries, long values, lines of every varint width, and
packets taken with and without bounds."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.engine import interning as new_interning
from worker.engine.wire import varint_widths

BASE_COMMIT = "0588589"
ROOT = Path(__file__).resolve().parents[2]


def _base_module() -> ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{BASE_COMMIT}:worker/engine/interning.py"],
            cwd=ROOT, capture_output=True, check=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("base_interning", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["base_interning"] = module
    exec(compile(source, "base_interning.py", "exec"), module.__dict__)
    return module


BASE = _base_module()
pytestmark = pytest.mark.skipif(BASE is None, reason=f"commit {BASE_COMMIT} not in this clone")

WORDS = ["", "a", "b", "main", "é", "x" * 200, "y" * 20_000, "tick", "render", "a\x00b"]


@st.composite
def dict_column(draw: Any) -> pa.DictionaryArray:
    words = draw(st.lists(st.sampled_from(WORDS) | st.text(max_size=5), min_size=0, max_size=12))
    entry_nulls = draw(st.lists(st.booleans(), min_size=len(words), max_size=len(words)))
    kind = draw(st.sampled_from([pa.string(), pa.large_string()]))
    dictionary = pa.array(
        [None if null and draw(st.booleans()) else w for w, null in zip(words, entry_nulls, strict=True)],
        type=kind,
    )
    n = draw(st.integers(0, 40))
    if len(dictionary) == 0:
        indices_list: list[int | None] = [None] * n
    else:
        indices_list = draw(st.lists(st.none() | st.integers(0, len(dictionary) - 1), min_size=n, max_size=n))
    index_type = draw(st.sampled_from([pa.int16(), pa.int32(), pa.int8()]))
    col = pa.DictionaryArray.from_arrays(pa.array(indices_list, type=index_type), dictionary)
    if n > 2 and draw(st.booleans()):
        start = draw(st.integers(0, n - 1))
        col = col.slice(start, draw(st.integers(0, n - start)))
    return col


@st.composite
def steps(draw: Any) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    last: pa.DictionaryArray | None = None
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["names", "categories", "locations", "names_chunks", "take", "resend"]))
        if op == "resend" and last is not None:
            # The same dictionary again (Flight resends it), other indices.
            k = len(last.dictionary)
            idx = draw(st.lists(st.none() | st.integers(0, max(k - 1, 0)), max_size=20)) if k else []
            col = pa.DictionaryArray.from_arrays(pa.array(idx, type=last.indices.type), last.dictionary)
            out.append(("names", col))
            continue
        if op == "take":
            below = draw(st.none() | st.tuples(*(st.integers(0, 300),) * 3))
            out.append(("take", below))
            continue
        col = draw(dict_column())
        last = col
        if op == "locations":
            line = st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**21, 2**28, 2**32 - 1, 2**40, -5])
            lines = np.array(draw(st.lists(line, min_size=len(col), max_size=len(col))), dtype=np.int64)
            out.append(("locations", (col, lines)))
        elif op == "names_chunks":
            other = col.slice(0, len(col) // 2)
            out.append(("names_chunks", [other, col]))
        else:
            out.append((op, col))
    out.append(("take", None))
    return out


def _run(module: ModuleType, plan: list[tuple[str, Any]]) -> list[Any]:
    interner = module.Interner()
    results: list[Any] = []
    for op, arg in plan:
        if op == "names":
            results.append(interner.names(arg).tolist())
        elif op == "categories":
            results.append(interner.categories(arg).tolist())
        elif op == "names_chunks":
            results.append(interner.names_of_chunks(arg).tolist())
        elif op == "locations":
            col, lines = arg
            results.append(interner.locations(col, lines).tolist())
        else:
            results.append(interner.take_packets(arg))
    results.append(interner.sizes)
    return results


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps())
def test_same_ids_and_packets_as_before(plan: list[tuple[str, Any]]) -> None:
    assert BASE is not None
    assert _run(new_interning, plan) == _run(BASE, plan)


@pytest.mark.parametrize(
    "top", [0, 1, 127, 128, 2**14, 2**21, 2**28, 2**35, 2**42, 2**49, 2**56, 2**63, 2**64 - 1]
)
def test_varints_as_before(top: int) -> None:
    assert BASE is not None
    v = np.array(sorted({0, 1, 127, 128, top, max(top - 1, 0)}), dtype=np.uint64)
    assert varint_widths(v).tolist() == BASE._varint_widths(v).tolist()
    w = varint_widths(v)
    at = np.cumsum(np.concatenate([[0], w[:-1]])).astype(np.int64)
    a = np.zeros(int(w.sum()), dtype=np.uint8)
    b = np.zeros(int(w.sum()), dtype=np.uint8)
    new_interning._put_varints(a, at, v, w)
    BASE._put_varints(b, at, v, w)
    assert a.tobytes() == b.tobytes()
