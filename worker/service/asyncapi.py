"""The AsyncAPI document, corrected to describe the wire as it is.

FastStream generates the document from the subscriber and the documented publishers, but it knows
neither our raw field maps nor our correlation: its request payload is empty, the dead-letter
payload is ``{}``, it invents a ``correlation_id`` header, and the job stream's address has no
parameter. :func:`wire_document` replaces the payloads with the wire-form schemas
(``contracts/schemas/wire/``), correlates answers by their ``request_id`` field, gives the job
stream and job status stream addresses their ``job_id`` parameter, and adds the cancels stream and
the state hash.
"""

from __future__ import annotations

import copy
from typing import Any

from contracts.keys import Keys
from contracts.wire_schema import wire_schemas

__all__ = ["wire_document"]

_CORRELATION = {
    "description": "The request entry id (what XADD returned on <prefix>:requests) that this status answers.",
    "location": "$message.payload#/request_id",
}


def _schema(name: str, schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(schemas[name])
    out.pop("$id", None)
    out.pop("$schema", None)
    return out


def _channel(doc: dict[str, Any], name: str, address: str, description: str) -> None:
    servers = next(iter(doc["channels"].values())).get("servers", [])
    doc["channels"][name] = {
        "address": address,
        "description": description,
        "servers": servers,
        "messages": {"Message": {"$ref": f"#/components/messages/{name}:Message"}},
    }


def wire_document(doc: dict[str, Any], keys: Keys) -> dict[str, Any]:
    """Correct FastStream's AsyncAPI document (a dict) in place and return it."""
    schemas = wire_schemas()
    messages: dict[str, Any] = doc["components"]["messages"]
    payloads = {
        "requests:SubscribeMessage": _schema("request_entry", schemas),
        "job stream:Message": {
            "oneOf": [
                _schema(n, schemas)
                for n in ("status_entry", "progress_entry", "chunk_entry", "cancel_answer_entry")
            ]
        },
        "job status stream:Message": {
            "oneOf": [_schema(n, schemas) for n in ("status_entry", "progress_entry", "cancel_answer_entry")]
        },
        "events:Message": _schema("status_entry", schemas),
        "dead letters:Message": _schema("dead_letter", schemas),
        "cancels:Message": _schema("cancel_entry", schemas),
        "job state:Message": _schema("job_state_hash", schemas),
    }
    for name, payload in payloads.items():
        message = messages.setdefault(name, {"title": name})
        message.pop("correlationId", None)
        message["payload"] = payload
        if name in ("job stream:Message", "job status stream:Message", "events:Message"):
            message["correlationId"] = dict(_CORRELATION)
    for message in messages.values():  # FastStream's invented header
        if str(message.get("correlationId", {}).get("location", "")).startswith("$message.header"):
            del message["correlationId"]
    job = doc["channels"]["job stream"]
    job["address"] = f"{keys.prefix}:job:{{job_id}}"
    job["parameters"] = {
        "job_id": {
            "description": (
                "The job id. The key keeps literal braces around it (a Redis Cluster hash tag): "
                f"{keys.prefix}:job:{{<job_id>}}, e.g. {keys.prefix}:job:{{alice-42}}."
            )
        }
    }
    status = doc["channels"]["job status stream"]
    status["address"] = f"{keys.prefix}:job:{{job_id}}:status"
    status["description"] = (
        "The job stream without its chunks: its status, progress and cancel entries, same order "
        "(written in the same transaction); expires job_ttl_s after the job ends."
    )
    status["parameters"] = job["parameters"]
    for channel in (job, status):  # FastStream doubles the braces in the binding too
        channel.get("bindings", {}).get("redis", {})["channel"] = channel["address"]
    _channel(doc, "cancels", keys.cancels, "Cancel entries: job_id and optional request_id (PROTOCOL §5).")
    _channel(
        doc,
        "job state",
        f"{keys.prefix}:job:{{job_id}}:state",
        "A hash, not a stream (HGETALL): the job's latest job-level status fields.",
    )
    doc["channels"]["job state"]["parameters"] = job["parameters"]
    doc["operations"]["cancels"] = {
        "action": "receive",
        "channel": {"$ref": "#/channels/cancels"},
        "messages": [{"$ref": "#/channels/cancels/messages/Message"}],
    }
    doc["operations"]["job state"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/job%20state"},
        "messages": [{"$ref": "#/channels/job%20state/messages/Message"}],
    }
    stale_payloads = (
        "job stream:Message:Payload",
        "job status stream:Message:Payload",
        "dead letters:Message:Payload",
    )
    for stale in ("EmptyPayload", *stale_payloads):
        doc["components"].get("schemas", {}).pop(stale, None)
    return doc
