"""The Flight SQL endpoints (pyarrow.flight) and :class:`DevServer`, which runs them in-process.

Modes:

- ``"micromegas"`` (default, strict): statement ``FlightInfo`` carries a zero-field schema and the
  SQL itself as ticket (no planning until DoGet, like upstream); ``CreatePreparedStatement``
  answers but prepared GetFlightInfo / DoPut / DoGet are UNIMPLEMENTED; ``thread_spans`` needs the
  range headers.
- ``"friendly"``: ``FlightInfo`` carries the real schema, prepared statements (with parameters)
  work, no range is needed.

In both, dictionary columns are hydrated to plain strings unless the call carries
``preserve_dictionary: true``; bad SQL is INVALID_ARGUMENT; a configured token is required as
``authorization: Bearer <token>`` (UNAUTHENTICATED otherwise).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.flight as fl

from worker.devserver import flightsql_messages as msg
from worker.devserver.headers import MIDDLEWARE_KEY, HeaderMiddlewareFactory, RequestHeaders
from worker.devserver.lake import Lake
from worker.devserver.memory import BATCH_ROWS, MemoryLake
from worker.devserver.query import PlannedQuery, QueryEngine
from worker.devserver.schemas import SchemaOptions

__all__ = ["DevServer", "Mode"]

#: The longest a stream stalled on purpose (``stall_streams_after``) waits to be released (s).
_STALL_MAX_S = 60.0

Mode = Literal["micromegas", "friendly"]


class _FlightSqlServer(fl.FlightServerBase):  # type: ignore[misc]
    def __init__(
        self, location: str, *, engine: QueryEngine, strict: bool, owner: DevServer, **kwargs: Any
    ) -> None:
        super().__init__(location, **kwargs)
        self.engine = engine
        self.strict = strict
        self.owner = owner
        self._prepared: dict[bytes, tuple[str, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _headers(context: Any) -> RequestHeaders:
        middleware = context.get_middleware(MIDDLEWARE_KEY)
        return middleware.headers if middleware is not None else RequestHeaders()

    def _prepared_statement(self, handle: bytes) -> tuple[str, dict[str, Any] | None]:
        with self._lock:
            found = self._prepared.get(handle)
        if found is None:
            raise ValueError("unknown prepared statement handle")
        return found

    def _stream(self, planned: PlannedQuery) -> fl.RecordBatchStream:
        fail_after = self.owner.break_streams_after
        stall_after = self.owner.stall_streams_after
        self.owner._note_stream()
        if planned.table is not None and fail_after is None and stall_after is None:
            return fl.RecordBatchStream(planned.table)  # written by Arrow's C++, batch by batch

        def batches() -> Iterator[pa.RecordBatch]:
            for count, batch in enumerate(planned.batches()):
                if fail_after is not None and count >= fail_after:
                    raise fl.FlightInternalError("devserver: stream broken on purpose (break_streams_after)")
                if stall_after is not None and count >= stall_after:
                    # Bounded, so a test that forgets to release cannot hold the server forever.
                    self.owner.stalls_released.wait(_STALL_MAX_S)
                yield batch

        # Not GeneratorStream: it does not send dictionary batches (pyarrow 26), so clients asking for
        # preserve_dictionary would fail with "did not have the expected number of dictionaries".
        return fl.RecordBatchStream(pa.RecordBatchReader.from_batches(planned.schema, batches()))

    # -- Flight RPCs ---------------------------------------------------------------------------

    def get_flight_info(self, context: Any, descriptor: fl.FlightDescriptor) -> fl.FlightInfo:
        name, command = msg.unpack(descriptor.command)
        headers = self._headers(context)
        if name == "CommandStatementQuery":
            ticket = msg.pack(msg.TicketStatementQuery(statement_handle=command.query.encode()))
            # Micromegas answers without planning: zero fields, the SQL as ticket.
            schema = pa.schema([]) if self.strict else self.engine.plan(command.query, headers).schema
            return fl.FlightInfo(schema, descriptor, [fl.FlightEndpoint(ticket, [])], -1, -1)
        if name == "CommandPreparedStatementQuery" and not self.strict:
            sql, params = self._prepared_statement(command.prepared_statement_handle)
            schema = self.engine.plan(sql, headers, params).schema
            ticket = msg.pack(
                msg.CommandPreparedStatementQuery(prepared_statement_handle=command.prepared_statement_handle)
            )
            return fl.FlightInfo(schema, descriptor, [fl.FlightEndpoint(ticket, [])], -1, -1)
        raise NotImplementedError(f"{name} is not implemented")

    def do_get(self, context: Any, ticket: fl.Ticket) -> fl.RecordBatchStream:
        name, command = msg.unpack(ticket.ticket)
        headers = self._headers(context)
        if name == "TicketStatementQuery":
            return self._stream(self.engine.plan(command.statement_handle.decode(), headers))
        if name == "CommandStatementQuery":  # a client that skipped GetFlightInfo
            return self._stream(self.engine.plan(command.query, headers))
        if name == "CommandPreparedStatementQuery" and not self.strict:
            sql, params = self._prepared_statement(command.prepared_statement_handle)
            return self._stream(self.engine.plan(sql, headers, params))
        raise NotImplementedError(f"DoGet of {name} is not implemented")

    def do_put(self, context: Any, descriptor: fl.FlightDescriptor, reader: Any, writer: Any) -> None:
        name, command = msg.unpack(descriptor.command)
        if name != "CommandPreparedStatementQuery" or self.strict:
            raise NotImplementedError(f"DoPut of {name} is not implemented")
        handle = command.prepared_statement_handle
        sql, _ = self._prepared_statement(handle)
        table = reader.read_all()
        params = None
        if table.num_rows:
            params = {str(i + 1): table.column(i)[0] for i in range(table.num_columns)}
        with self._lock:
            self._prepared[handle] = (sql, params)
        # ADBC expects the bare DoPutPreparedStatementResult, not wrapped in Any.
        result = msg.DoPutPreparedStatementResult(prepared_statement_handle=handle)
        writer.write(pa.py_buffer(result.SerializeToString()))

    def do_action(self, context: Any, action: fl.Action) -> Iterator[fl.Result]:
        kind = action.type
        if kind == "CreatePreparedStatement":
            _, request = msg.unpack(action.body.to_pybytes())
            sql = request.query
            schema = self.engine.plan(sql, self._headers(context)).schema
            if self.strict:
                handle = sql.encode()  # as upstream: the handle is the SQL text
            else:
                handle = uuid.uuid4().hex.encode()
                with self._lock:
                    self._prepared[handle] = (sql, None)
            result = msg.ActionCreatePreparedStatementResult(
                prepared_statement_handle=handle, dataset_schema=schema.serialize().to_pybytes()
            )
            return iter([fl.Result(msg.pack(result))])
        if kind == "ClosePreparedStatement":
            _, request = msg.unpack(action.body.to_pybytes())
            with self._lock:
                self._prepared.pop(request.prepared_statement_handle, None)
            return iter([])
        raise NotImplementedError(f"action {kind} is not implemented")

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [
            ("CreatePreparedStatement", "prepare a statement (not executable in micromegas mode)"),
            ("ClosePreparedStatement", "release a prepared statement"),
        ]


class DevServer:
    """A Flight SQL server over a :class:`Lake`, in the current process (gRPC's own threads).

    Use as a context manager, or call :meth:`start` / :meth:`stop`::

        with DevServer(Lake(LakeConfig(processes=("small",)))) as server:
            print(server.url)

    Args:
        lake: The data to serve.
        host: Interface to bind.
        port: TCP port; 0 picks a free one (see :attr:`port` / :attr:`url` after start).
        mode: ``"micromegas"`` (strict, the default) or ``"friendly"`` (see the module docstring).
        token: When set, every call needs ``authorization: Bearer <token>``.
        tls: ``(cert_pem, key_pem)`` to serve ``grpc+tls``.
        schema_options: Dictionary key width / plain strings, ``async_events.hash`` presence.
        in_memory: Generate every view of the lake once, in :meth:`start` before listening, and
            serve it from memory (:mod:`worker.devserver.memory`); default: generate on the fly.
        batch_rows: With ``in_memory``, most rows per served batch (default 65,536: the on-the-fly
            block size).
    """

    def __init__(
        self,
        lake: Lake,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: Mode = "micromegas",
        token: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
        schema_options: SchemaOptions | None = None,
        in_memory: bool = False,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        if mode not in ("micromegas", "friendly"):
            raise ValueError(f"mode must be 'micromegas' or 'friendly', not {mode!r}")
        self.lake = lake
        self.host = host
        self.mode: Mode = mode
        self.token = token
        self.tls = tls
        self.schema_options = schema_options or SchemaOptions()
        self.port = port
        self.in_memory = in_memory
        self.batch_rows = batch_rows
        #: The lake held in memory once started with ``in_memory``.
        self.memory: MemoryLake | None = None
        #: When set, every stream opened afterwards fails after this many batches (tests).
        self.break_streams_after: int | None = None
        #: When set, every stream opened afterwards stops after this many batches, mid-stream, until
        #: :attr:`stalls_released` is set (by :meth:`stop` at the latest; tests).
        self.stall_streams_after: int | None = None
        self.stalls_released = threading.Event()
        self._streams_opened = 0
        self._stream_cond = threading.Condition()
        self._server: _FlightSqlServer | None = None
        self._engine: QueryEngine | None = None

    @property
    def url(self) -> str:
        scheme = "grpc+tls" if self.tls else "grpc"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def known_shapes_answered(self) -> int:
        """Statements answered from the in-memory lake without DataFusion so far."""
        return 0 if self._engine is None else self._engine.known_shapes

    @property
    def streams_opened(self) -> int:
        """DoGet streams started so far."""
        return self._streams_opened

    def _note_stream(self) -> None:
        with self._stream_cond:
            self._streams_opened += 1
            self._stream_cond.notify_all()

    def wait_for_streams(self, count: int, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` DoGet streams have started (or the timeout passes)."""
        with self._stream_cond:
            return self._stream_cond.wait_for(lambda: self._streams_opened >= count, timeout)

    def start(self) -> DevServer:
        """Bind and serve. Returns self."""
        if self._server is not None:
            raise RuntimeError("DevServer already started")
        if self.in_memory and self.memory is None:
            self.memory = MemoryLake(self.lake, self.schema_options, batch_rows=self.batch_rows).load()
        engine = QueryEngine(
            self.lake,
            strict=self.mode == "micromegas",
            schema_options=self.schema_options,
            memory=self.memory,
        )
        scheme = "grpc+tls" if self.tls else "grpc"
        kwargs: dict[str, Any] = {"middleware": {MIDDLEWARE_KEY: HeaderMiddlewareFactory(self.token)}}
        if self.tls:
            kwargs["tls_certificates"] = [fl.CertKeyPair(self.tls[0], self.tls[1])]
        server = _FlightSqlServer(
            f"{scheme}://{self.host}:{self.port}",
            engine=engine,
            strict=self.mode == "micromegas",
            owner=self,
            **kwargs,
        )
        self._server = server
        self._engine = engine
        self.port = server.port
        return self

    def stop(self) -> None:
        """Stop serving (open streams are cancelled). Idempotent."""
        server, self._server = self._server, None
        self.stalls_released.set()  # a stalled stream's handler must return for shutdown to end
        if server is not None:
            server.shutdown()
            server.wait()

    def __enter__(self) -> DevServer:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
