"""Hypothesis strategies for abusive request entries, and the check that one entry got its answer.

Every string slot draws from hostile values (SQL injection, path traversal, Redis protocol and key
syntax, control characters, unicode, oversize) mixed with valid ones, so that some requests parse
and reach the source while others fail validation at every field.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from hypothesis import strategies as st

from contracts import Keys, TraceRequest, parse_entry
from contracts.events import StatusEvent

__all__ = ["entries", "parses", "wait_for_answer"]

NASTY = [
    "'; DROP TABLE processes; --",
    "' OR '1'='1",
    "x') UNION SELECT * FROM blocks --",
    "../../../../etc/passwd",
    "..",
    "../",
    "/abs/path",
    "a/../../b",
    "..\\..\\windows",
    "%2e%2e%2f",
    "{evil}",
    "}:x:{",
    "t:requests",
    "*",
    "\r\nFLUSHALL\r\n",
    "\x00",
    "abc\n",
    "\u202etxt.exe",
    "😀" * 40,
    "é" * 300,
    "${jndi:ldap://x}",
    "%s%n%x",
    "",
    " ",
    "a" * 129,
    "a" * 5000,
]


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NASTY), st.text(max_size=60), st.text(st.characters(), max_size=300))


def _times() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(
            [
                "0001-01-01T00:00:00Z",
                "9999-12-31T23:59:59.999999Z",
                "2026-11-26T10:00:00",  # no offset
                "2026-02-30T00:00:00Z",
                "1970-01-01T00:00:00Z",
                "-0001-01-01T00:00:00Z",
            ]
        ),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        _strings(),
        st.none(),
    )


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | _strings(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_strings(), inner, max_size=4),
        max_leaves=12,
    )


def _requests(process_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Request objects: every field valid, missing, of a wrong type or hostile."""
    labels = st.one_of(
        st.dictionaries(_strings(), _strings(), max_size=20),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), min_size=17, max_size=2000),
        _json_values(),
    )
    fields: dict[str, st.SearchStrategy[Any]] = {
        "v": st.sampled_from([1, 2, "1", None, 1.0, True]),
        "process_id": st.one_of(
            st.sampled_from(process_ids), _strings(), st.uuids().map(str), _json_values()
        ),
        "begin": _times(),
        "end": _times(),
        "span_types": st.one_of(
            st.sampled_from(["thread", "async", "both", "THREAD", "all"]), _json_values()
        ),
        "job_id": st.one_of(
            _strings(), st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True), _json_values()
        ),
        "chunks": st.one_of(st.booleans(), _json_values()),
        "labels": labels,
        "extra": _json_values(),  # an unknown field
    }
    anything = st.fixed_dictionaries({}, optional=fields)
    valid_ranges = st.sampled_from(
        [
            (None, None),
            ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),  # over max_range_s
            ("1970-01-01T00:00:00Z", "1970-01-01T00:00:01Z"),  # before any data
            ("2026-11-26T10:00:00+14:00", "2026-11-26T10:00:00-12:00"),
        ]
    )
    valid = st.builds(
        lambda pid, rng, job, labels, kinds: {
            "process_id": pid,
            "begin": rng[0],
            "end": rng[1],
            "job_id": job,
            "labels": labels,
            "span_types": kinds,
        },
        st.one_of(st.sampled_from(process_ids), st.uuids().map(str)),
        valid_ranges,
        st.one_of(
            st.none(),
            st.sampled_from(["..", ".", "-", "_", "a" * 128]),
            st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True),
        ),
        st.dictionaries(
            st.from_regex(r"[A-Za-z0-9._:/-]{1,64}", fullmatch=True),
            # Characters a label may hold (PROTOCOL §1 refuses controls, C1 and some format characters).
            st.text(st.characters(min_codepoint=32, exclude_categories=("Cc", "Cf", "Cs")), max_size=256),
            max_size=16,
        ),
        st.sampled_from(["thread", "async", "both"]),
    ).map(lambda d: {k: v for k, v in d.items() if v is not None})
    # valid but one field replaced by anything
    mutated = st.builds(
        lambda d, name, value: {**d, name: value},
        valid,
        st.sampled_from(sorted(fields)),
        st.one_of(*fields.values()),
    )
    return st.one_of(anything, valid, mutated)


def entries(process_ids: list[str]) -> st.SearchStrategy[dict[bytes, bytes]]:
    """Whole entries (field map) as sent with XADD."""
    as_json = _requests(process_ids).map(
        lambda obj: json.dumps(obj, ensure_ascii=False).encode(errors="surrogatepass")
    )
    # Whole JSON objects three times as often as each broken form: most of them still fail validation
    # (PROTOCOL §1 is strict), and the fuzz must reach the worker's job path too, not only dead letters.
    request_field = st.one_of(
        as_json,
        as_json,
        as_json,
        _json_values().map(lambda v: json.dumps(v).encode()),  # valid JSON, not an object
        as_json.map(lambda b: b[: max(1, len(b) // 2)]),  # truncated JSON
        st.binary(max_size=300),  # garbage, usually not UTF-8
        st.builds(lambda n: b'{"process_id": "' + b"x" * n + b'"}', st.integers(16_000, 40_000)),  # oversize
    )
    extra = st.dictionaries(st.binary(min_size=1, max_size=10), st.binary(max_size=50), max_size=2)
    with_request = st.builds(lambda r, more: {b"request": r, **more}, request_field, extra)
    without = st.dictionaries(
        st.binary(min_size=1, max_size=20).filter(lambda k: k != b"request"),
        st.binary(max_size=200),
        min_size=1,
        max_size=5,
    )
    return st.one_of(with_request, with_request, without)


def parses(fields: dict[bytes, bytes]) -> TraceRequest | None:
    """The request the worker must accept from these fields, or None if it must reject them."""
    raw = fields.get(b"request")
    if raw is None or len(raw) > 16 * 1024:
        return None
    try:
        return TraceRequest.model_validate_json(raw)
    except ValueError:
        return None


def wait_for_answer(  # noqa: PLR0917 - the entry and where to look
    client: redis.Redis,
    keys: Keys,
    entry_id: str,
    request: TraceRequest | None,
    job_from: str,
    within: float = 30,
) -> str:
    """Block until the entry has its answer; return what it was.

    An entry that does not parse must get a dead-letter entry naming it; one that parses must get a
    terminal status (or a duplicate reply) on its job stream after ``job_from``.
    """
    deadline = time.monotonic() + within
    if request is None:
        last = "0-0"
        while time.monotonic() < deadline:
            reply: Any = client.xread({keys.dead: last}, block=1000, count=100)
            for _, rows in reply or []:
                for row_id, fields in rows:
                    last = row_id
                    if fields.get(b"entry_id", b"").decode() == entry_id:
                        assert fields.get(b"reason"), fields
                        assert fields.get(b"error_code") == b"invalid_request", fields
                        return "dead"
        raise AssertionError(f"no dead-letter entry for {entry_id}")
    stream = keys.job(request.effective_job_id())
    last = job_from
    while time.monotonic() < deadline:
        reply = client.xread({stream: last}, block=1000, count=100)
        for _, rows in reply or []:
            for row_id, fields in rows:
                last = row_id
                event = parse_entry(fields)
                if not isinstance(event, StatusEvent) or event.request_id != entry_id:
                    continue  # answers name their request (PROTOCOL §2)
                if event.state.terminal or "duplicate" in (event.detail or ""):
                    if event.state.terminal and event.state.value == "failed":
                        assert event.error_code and event.message, event
                    return event.state.value
    raise AssertionError(f"no terminal status for {entry_id} on {stream}")
