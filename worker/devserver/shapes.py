"""Recognise the statements the in-memory lake answers without DataFusion.

A statement has a *known shape* when it is exactly::

    SELECT * | col, ... FROM view_instance('<view>', '<id>')
      [WHERE cond AND cond ...] [ORDER BY <sort column> [ASC]] [LIMIT n]

with each ``cond`` a comparison of the view's sort column (``begin`` for thread spans, ``time``
otherwise) with a ``TIMESTAMP '...Z'`` literal, or ``end >= / > TIMESTAMP`` on thread spans;
or ``FROM process_spans('<id>', 'thread')`` with the thread-span conditions and no ``ORDER BY``
(its rows are thread after thread, not in one order). That covers the per-thread, one-query and
async-event SQL of the worker's source (worker/source/queries.py) and upstream's per-thread query.
Anything else (other conditions, aliases, expressions, ``OR``, joins, aggregates, ``DESC``) is not
a known shape and runs through DataFusion as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from worker.devserver.memory import ORDER_COLUMN, Bounds

__all__ = ["Shape", "parse_shape"]

_STATEMENT = re.compile(
    r"""^\s*SELECT\s+(?P<cols>.+?)\s+FROM\s+
    (?:view_instance\(\s*'(?P<view>[a-z_]+)'\s*,\s*'(?P<id>[^']*)'\s*\)
    |process_spans\(\s*'(?P<pid>[^']*)'\s*,\s*'thread'\s*\))
    (?:\s+WHERE\s+(?P<where>.+?))?
    (?:\s+ORDER\s+BY\s+(?P<order>"[a-z_]+"|[A-Za-z_]+)(?:\s+ASC)?)?
    (?:\s+LIMIT\s+(?P<limit>\d{1,18}))?\s*;?\s*$""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)
_IDENT = re.compile(r'^\s*(?:"(?P<quoted>[a-z_]+)"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))\s*$')
_COND = re.compile(
    r"""^\s*(?:"(?P<quoted>[a-z_]+)"|(?P<bare>[A-Za-z_]+))\s*(?P<op><=|>=|<|>|=)\s*
    TIMESTAMP\s+'(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,9})?)Z'\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)
#: Literal values blanked out of a statement to key the schema cache (same key, same schema).
_LITERALS = re.compile(r"'[^']*'|\b\d+\b")


@dataclass(frozen=True)
class Shape:
    """A statement the in-memory lake answers itself.

    Attributes:
        view, instance: The ``view_instance`` arguments.
        columns: Projected columns, in order (every column for ``*``).
        bounds: The WHERE clause as inclusive ns bounds.
        limit: ``LIMIT n``, if any.
        key: The statement with its literals blanked: statements with equal keys have equal schemas.
    """

    view: str
    instance: str
    columns: tuple[str, ...]
    bounds: Bounds
    limit: int | None
    key: str


def _ident(text: str) -> str | None:
    m = _IDENT.match(text)
    if m is None:
        return None
    return m["quoted"] or m["bare"].lower()  # DataFusion folds unquoted names to lower case


def _ns(text: str) -> int | None:
    if not "1700" <= text[:4] <= "2200":  # numpy wraps around silently outside int64 ns
        return None
    try:
        value = np.datetime64(text.replace(" ", "T"), "ns")
    except ValueError:
        return None
    if np.isnat(value):
        return None
    return int(value.astype(np.int64))


def _condition(view: str, text: str, bounds: Bounds) -> Bounds | None:
    m = _COND.match(text)
    if m is None:
        return None
    column = m["quoted"] or m["bare"].lower()
    ts = _ns(m["ts"])
    if ts is None:
        return None
    op = m["op"]
    view = "thread_spans" if view == "process_spans" else view  # same columns, same conditions
    if column == ORDER_COLUMN[view]:
        lo = {">=": ts, ">": ts + 1, "=": ts}.get(op)
        hi = {"<=": ts, "<": ts - 1, "=": ts}.get(op)
        return bounds.meet(Bounds(lo=bounds.lo if lo is None else lo, hi=bounds.hi if hi is None else hi))
    if view == "thread_spans" and column == "end" and op in (">=", ">"):
        return bounds.meet(Bounds(end_lo=ts if op == ">=" else ts + 1))
    return None


def parse_shape(sql: str, schemas: dict[str, pa.Schema]) -> Shape | None:
    """The statement's shape, or None when it is not one the in-memory lake answers itself."""
    m = _STATEMENT.match(sql)
    if m is None:
        return None
    view, instance = ("process_spans", m["pid"]) if m["pid"] is not None else (m["view"], m["id"])
    if view not in schemas or (view not in ORDER_COLUMN and view != "process_spans"):
        return None
    names = schemas[view].names
    if m["cols"].strip() == "*":
        columns = tuple(names)
    else:
        parsed = [_ident(c) for c in m["cols"].split(",")]
        if any(c is None or c not in names for c in parsed) or len(set(parsed)) != len(parsed):
            return None
        columns = tuple(c for c in parsed if c is not None)
    if m["order"] is not None:
        order = m["order"].strip('"') if m["order"].startswith('"') else m["order"].lower()
        if order != ORDER_COLUMN.get(view):
            return None
    bounds: Bounds | None = Bounds()
    if m["where"] is not None:
        for cond in _AND.split(m["where"]):
            assert bounds is not None
            bounds = _condition(view, cond, bounds)
            if bounds is None:
                return None
    assert bounds is not None
    limit = int(m["limit"]) if m["limit"] is not None else None
    return Shape(view, instance, columns, bounds, limit, f"{view}: {_LITERALS.sub('?', sql)}")
