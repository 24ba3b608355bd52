"""The few Flight SQL protobuf messages the development server speaks, built at import time.

No generated code and no protoc step: a ``FileDescriptorProto`` declares the messages of package
``arrow.flight.protocol.sql`` with the field numbers of Arrow's ``FlightSql.proto``, so ``Any``
payloads are byte-identical to what real clients (ADBC, pyarrow.flight) send and expect.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = [
    "ActionClosePreparedStatementRequest",
    "ActionCreatePreparedStatementRequest",
    "ActionCreatePreparedStatementResult",
    "CommandGetSqlInfo",
    "CommandPreparedStatementQuery",
    "CommandStatementQuery",
    "DoPutPreparedStatementResult",
    "TicketStatementQuery",
    "pack",
    "unpack",
]

_PACKAGE = "arrow.flight.protocol.sql"
_TYPE_PREFIX = "type.googleapis.com/" + _PACKAGE + "."

_F = descriptor_pb2.FieldDescriptorProto
#: message name -> [(field name, number, type, label)], numbers as in FlightSql.proto.
_MESSAGES: dict[str, list[tuple[str, int, int, int]]] = {
    "CommandStatementQuery": [
        ("query", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL),
        ("transaction_id", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
    ],
    "TicketStatementQuery": [("statement_handle", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL)],
    "CommandGetSqlInfo": [("info", 1, _F.TYPE_UINT32, _F.LABEL_REPEATED)],
    "ActionCreatePreparedStatementRequest": [
        ("query", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL),
        ("transaction_id", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
    ],
    "ActionCreatePreparedStatementResult": [
        ("prepared_statement_handle", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
        ("dataset_schema", 2, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
        ("parameter_schema", 3, _F.TYPE_BYTES, _F.LABEL_OPTIONAL),
    ],
    "ActionClosePreparedStatementRequest": [
        ("prepared_statement_handle", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL)
    ],
    "CommandPreparedStatementQuery": [("prepared_statement_handle", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL)],
    "DoPutPreparedStatementResult": [("prepared_statement_handle", 1, _F.TYPE_BYTES, _F.LABEL_OPTIONAL)],
}


def _build() -> dict[str, type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="trace_worker_devserver_flightsql.proto", package=_PACKAGE, syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        msg = file.message_type.add(name=name)
        for field_name, number, ftype, label in fields:
            msg.field.add(name=field_name, number=number, type=ftype, label=label)
    # DoPutPreparedStatementResult's handle is `optional` (proto3 explicit presence).
    put = file.message_type[list(_MESSAGES).index("DoPutPreparedStatementResult")]
    put.field[0].proto3_optional = True
    put.field[0].oneof_index = 0
    put.oneof_decl.add(name="_prepared_statement_handle")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _MESSAGES
    }


_CLASSES = _build()
CommandStatementQuery: Any = _CLASSES["CommandStatementQuery"]
TicketStatementQuery: Any = _CLASSES["TicketStatementQuery"]
CommandGetSqlInfo: Any = _CLASSES["CommandGetSqlInfo"]
ActionCreatePreparedStatementRequest: Any = _CLASSES["ActionCreatePreparedStatementRequest"]
ActionCreatePreparedStatementResult: Any = _CLASSES["ActionCreatePreparedStatementResult"]
ActionClosePreparedStatementRequest: Any = _CLASSES["ActionClosePreparedStatementRequest"]
CommandPreparedStatementQuery: Any = _CLASSES["CommandPreparedStatementQuery"]
DoPutPreparedStatementResult: Any = _CLASSES["DoPutPreparedStatementResult"]


def pack(message: Message) -> bytes:
    """Serialize ``message`` inside a ``google.protobuf.Any``, as Flight SQL commands travel."""
    envelope = any_pb2.Any()
    envelope.Pack(message)
    return envelope.SerializeToString()


def unpack(data: bytes) -> tuple[str, Any]:
    """Parse an ``Any``-wrapped Flight SQL message.

    Returns:
        The short message name (e.g. ``"CommandStatementQuery"``) and the parsed message.

    Raises:
        ValueError: the bytes are not an ``Any`` holding one of the known messages.
    """
    envelope = any_pb2.Any()
    try:
        envelope.ParseFromString(data)
    except Exception as exc:  # DecodeError; any garbage ticket is a client mistake
        raise ValueError("not a Flight SQL command (expected a protobuf Any)") from exc
    if not envelope.type_url.startswith(_TYPE_PREFIX):
        raise ValueError(f"not a Flight SQL command: {envelope.type_url!r}")
    name = envelope.type_url[len(_TYPE_PREFIX) :]
    cls = _CLASSES.get(name)
    if cls is None:
        raise NotImplementedError(f"Flight SQL command {name} is not implemented")
    message = cls()
    envelope.Unpack(message)
    return name, message
