"""Statement tickets: DoGet without GetFlightInfo, for servers whose ticket is the statement itself.

Micromegas answers GetFlightInfo with one endpoint whose ticket is ``TicketStatementQuery`` holding
the SQL text, and plans nothing until DoGet (its own Python client skips GetFlightInfo and sends
that ticket straight away). For such a server the GetFlightInfo round trip carries no information,
so the source builds the ticket itself and sends it with pyarrow.flight's ``DoGet``
(:mod:`worker.source.direct`); :func:`statement_partition` wraps it as the partition ADBC's
``read_partition`` expects (a serialized ``FlightInfo`` with that one endpoint).
:func:`is_statement_ticket` checks a server's real answer, which is how
``flightsql_direct_tickets=auto`` learns whether the shortcut holds.

Only the few protobuf fields involved are written or read here (Flight.proto, FlightSql.proto).
"""

from __future__ import annotations

__all__ = ["is_statement_ticket", "statement_partition", "statement_ticket"]

_TICKET_TYPE = b"type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery"
_LEN = 2  # protobuf wire type: length-delimited
# Field numbers: FlightInfo.endpoint = 3; FlightEndpoint.ticket = 1, .location = 2; Ticket.ticket = 1;
# Any.type_url = 1, .value = 2; TicketStatementQuery.statement_handle = 1.
_INFO_ENDPOINT, _ENDPOINT_TICKET, _ENDPOINT_LOCATION = 3, 1, 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def statement_ticket(sql: str) -> bytes:
    """``Any(TicketStatementQuery(statement_handle=sql))``, the ticket bytes Micromegas returns: what
    a Flight ``DoGet`` takes (:mod:`worker.source.direct`)."""
    return _field(1, _TICKET_TYPE) + _field(2, _field(1, sql.encode()))


def statement_partition(sql: str) -> bytes:
    """A serialized ``FlightInfo`` with one endpoint (no location: this server) whose ticket is the
    statement: what ``AdbcConnection.read_partition`` takes."""
    return _field(_INFO_ENDPOINT, _field(_ENDPOINT_TICKET, _field(1, statement_ticket(sql))))


def _fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """Top-level (field number, value) pairs of a protobuf message.

    Raises:
        ValueError: not a well-formed message.
    """
    out: list[tuple[int, bytes | int]] = []
    i, end = 0, len(data)

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            if i >= end or shift > 63:
                raise ValueError("truncated varint")
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == _LEN:
            size = varint()
            if i + size > end:
                raise ValueError("truncated field")
            out.append((number, data[i : i + size]))
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            out.append((number, 0))
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if i != end:
        raise ValueError("truncated message")
    return out


def is_statement_ticket(partition: bytes, sql: str) -> bool:
    """Whether a server's GetFlightInfo answer (as ADBC serializes it) is one endpoint, on this
    server, whose ticket is exactly :func:`statement_partition`'s for ``sql``."""
    try:
        endpoints = [v for n, v in _fields(partition) if n == _INFO_ENDPOINT]
        if len(endpoints) != 1 or not isinstance(endpoints[0], bytes):
            return False
        parts = _fields(endpoints[0])
        if any(n == _ENDPOINT_LOCATION for n, _ in parts):
            return False
        tickets = [v for n, v in parts if n == _ENDPOINT_TICKET]
        if len(tickets) != 1 or not isinstance(tickets[0], bytes):
            return False
        inner = [v for n, v in _fields(tickets[0]) if n == 1]
        return inner == [statement_ticket(sql)]
    except ValueError:
        return False
