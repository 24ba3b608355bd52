"""The additive `logs` and `metrics` request fields: without them, job ids and wire form are unchanged."""

from __future__ import annotations

import hashlib
import json

import pytest

from contracts.request import TraceRequest

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


def _v1_id(**extra: object) -> str:
    """The derived id as specified before the flags existed, plus ``extra`` keys."""
    key = {"process_id": PID, "begin": None, "end": None, "span_types": "both", "chunks": True, **extra}
    return "t-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def test_defaults_are_false_and_keep_the_job_id_and_the_wire_form() -> None:
    plain = TraceRequest(process_id=PID)
    assert (plain.logs, plain.metrics) == (False, False)
    assert plain.effective_job_id() == _v1_id()
    explicit = TraceRequest(process_id=PID, logs=False, metrics=False)
    assert explicit.effective_job_id() == plain.effective_job_id()
    assert explicit.to_json() == plain.to_json()
    assert "logs" not in plain.to_json() and "metrics" not in plain.to_json()


@pytest.mark.parametrize(
    ("flags", "extra"),
    [
        ({"logs": True}, {"logs": True}),
        ({"metrics": True}, {"metrics": True}),
        ({"logs": True, "metrics": True}, {"logs": True, "metrics": True}),
    ],
)
def test_set_flags_are_hashed_in_sorted_order_and_sent(
    flags: dict[str, bool], extra: dict[str, bool]
) -> None:
    req = TraceRequest(process_id=PID, **flags)
    assert req.effective_job_id() == _v1_id(**extra) != _v1_id()
    wire = json.loads(req.to_json())
    assert {k: wire[k] for k in flags} == flags
    assert TraceRequest.from_json(req.to_json()) == req


def test_flags_must_be_booleans() -> None:
    with pytest.raises(ValueError, match="logs"):
        TraceRequest.from_json(json.dumps({"process_id": PID, "logs": "yes please"}))
