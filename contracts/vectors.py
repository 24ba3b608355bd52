"""Test vectors of the derived job id (``contracts/job_id_vectors.json``), for clients in any language.

Each vector is a request as sent (the ``request`` field's JSON text), the canonical byte string it
hashes to (docs/PROTOCOL.md, "Job ids") and the resulting job id; ``rejected_times`` lists time
spellings that are not RFC 3339 (refused by the worker: no id is derived from them). Regenerate
after a change (a test fails while the file is stale)::

    python -m contracts.vectors
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.request import TraceRequest

__all__ = ["CASES", "REJECTED_TIMES", "VECTORS_FILE", "render", "vectors"]

#: Where the vectors live (shipped with the package).
VECTORS_FILE = Path(__file__).resolve().parent / "job_id_vectors.json"

_PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"

#: (what the vector shows, request JSON text as a client would send it).
CASES: list[tuple[str, str]] = [
    ("only the process: everything else defaults, begin/end null", f'{{"process_id": "{_PID}"}}'),
    ("upper-case UUID is normalised to lower case", f'{{"process_id": "{_PID.upper()}"}}'),
    (
        "closed range in UTC",
        f'{{"process_id": "{_PID}", "begin": "2026-11-26T10:00:00Z", "end": "2026-11-26T10:05:00Z"}}',
    ),
    (
        "the same instants with offsets give the same id",
        f'{{"process_id": "{_PID}", "begin": "2026-11-26T11:00:00+01:00", '
        '"end": "2026-11-26T05:05:00-05:00"}',
    ),
    (
        "fractions: kept to the microsecond, further digits dropped (not rounded)",
        f'{{"process_id": "{_PID}", "begin": "2026-11-26T10:00:00.1234567Z", '
        '"end": "2026-11-26T10:00:00.9999999Z"}',
    ),
    ("milliseconds", f'{{"process_id": "{_PID}", "begin": "2026-11-26T10:00:00.250Z"}}'),
    ("only end", f'{{"process_id": "{_PID}", "end": "2026-11-26T10:05:00Z"}}'),
    ("before 1970: a negative number", f'{{"process_id": "{_PID}", "begin": "1969-12-31T23:59:59.5Z"}}'),
    ("thread spans, blob only", f'{{"process_id": "{_PID}", "span_types": "thread", "chunks": false}}'),
    ("async spans", f'{{"process_id": "{_PID}", "span_types": "async", "chunks": true}}'),
    (
        "labels, v and max_age_s are not part of the id",
        f'{{"v": 1, "process_id": "{_PID}", "labels": {{"requested_by": "alice"}}, "max_age_s": 0}}',
    ),
    ("logs (v1.1): in the string only when true, after end", f'{{"process_id": "{_PID}", "logs": true}}'),
    (
        "logs and metrics (v1.1) both set; false flags stay out",
        f'{{"process_id": "{_PID}", "metrics": true, "logs": true, "chunks": false}}',
    ),
    ("metrics false: the v1 id", f'{{"process_id": "{_PID}", "metrics": false}}'),
    (
        "compress (v1.1): in the string only when given, after chunks",
        f'{{"process_id": "{_PID}", "compress": "gzip"}}',
    ),
    (
        "compress none given explicitly: also in the string (absent means the worker's default)",
        f'{{"process_id": "{_PID}", "compress": "none", "logs": true}}',
    ),
    (
        "an explicit job id is used as is (the canonical string is still the fingerprint)",
        f'{{"process_id": "{_PID}", "job_id": "alice-42"}}',
    ),
]


#: Spellings of ``begin``/``end`` that are not RFC 3339 and that the worker refuses
#: (``invalid_request``): a client must not derive an id from them.
REJECTED_TIMES: list[str] = [
    "2026-11-01T00:00:00+0100",
    "2026-11-01T00:00Z",
    "2026-11-01T00:00:00,5Z",
    "2026-11-01 00:00:00Z",
    "2026-11-01T00:00:00",
    "20261101T000000Z",
]


def vectors() -> list[dict[str, Any]]:
    """Every vector: ``note``, ``request`` (JSON text), ``canonical`` (text), ``fingerprint``, ``job_id``."""
    out = []
    for note, raw in CASES:
        request = TraceRequest.model_validate_json(raw)
        out.append(
            {
                "note": note,
                "request": raw,
                "canonical": request.canonical().decode(),
                "fingerprint": request.fingerprint(),
                "job_id": request.effective_job_id(),
            }
        )
    return out


def render() -> str:
    """The file text (stable formatting)."""
    return json.dumps({"version": 1, "vectors": vectors(), "rejected_times": REJECTED_TIMES}, indent=2) + "\n"


if __name__ == "__main__":
    VECTORS_FILE.write_text(render())
    print(VECTORS_FILE)
