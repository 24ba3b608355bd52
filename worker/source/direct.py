"""Statement tickets read with pyarrow.flight: one ``DoGet`` per query, through Arrow's C++ gRPC client.

With direct tickets (:mod:`worker.source.tickets`) a query is a single DoGet of a ticket the source
builds itself, so nothing of ADBC's is needed for it. ADBC's Go driver costs about 1 ms of CPU per
DoGet more than ``pyarrow.flight`` for a tiny result (1.1 vs 0.22 CPU-ms) and 2.6 ms more for a
small process's spans (3.9 vs 1.3), most of it the full Go garbage collection it runs when a stream
is released; a small job makes three DoGets. Everything else (GetFlightInfo, servers without direct
tickets, learning them in ``auto``) stays on ADBC (:mod:`worker.source.flightsql`).

Each concurrent query gets a :class:`pyarrow.flight.FlightClient` of its own (Arrow gives each
client its own gRPC channel and connection), from a pool of idle ones, as ADBC's connections: a
connection cut mid-stream breaks that one stream, whose rows were flowing (``SourceBroken``), never
a neighbour still waiting for its schema. A client whose query failed in transport is dropped, not
reused: a gRPC channel whose connection failed sits in reconnect backoff, up to minutes after a long
outage, and fails every call fast meanwhile; a new client dials at once. Headers travel with each
call. Clients are cheap to drop: closing one sends nothing.

Blocking calls run in daemon threads of their own (:meth:`DirectClients.submit`), never joined:
``FlightClient.do_get`` reads the stream's schema before it returns the reader, and that wait cannot
be cancelled (there is no reader to cancel yet, and closing the client ends nothing). A DoGet whose
server stalls before the schema is therefore abandoned where it waits, and ends when the server
answers or the connection drops; everything after the schema is cancellable
(:meth:`DirectQuery.cancel`).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as fl

from worker.errors import SourceUnavailable
from worker.source.config import FlightSqlConfig
from worker.source.tickets import statement_ticket
from worker.source.translate import translate_errors

# gRPC core (under pyarrow.flight) logs a failed TLS handshake at INFO as plain text on stderr,
# around the worker's JSON log lines; the failure itself reaches the caller as an error. Read when
# gRPC starts (its first channel), so setting it here, before any client, is in time; an operator's
# own GRPC_VERBOSITY wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__all__ = ["MAX_MESSAGE_BYTES", "DaemonThreads", "DirectClients", "DirectQuery"]

#: gRPC's receive limit per message (one record batch); its 16 MiB default is smaller than one large
#: batch. The same limit as the ADBC connections'.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: gRPC's receive window per stream, fixed. With its default BDP probing the window grew with the
#: stream's length (the server sends faster than the engine takes batches), and the worker's peak
#: RSS with it (1.35x from 2.6 M to 10.5 M spans in `bench_generate`). Each stream read ahead holds
#: up to a window of received bytes besides the batches queued for it (``fetch.py``), so the window
#: is small: with 4 MiB, heaptrack counted 37 MB of gRPC receive buffers at 10.5 M spans, with 1 MiB
#: 17 MB. 1 MiB per round trip is still 1 GB/s per stream at 1 ms, 50 MB/s (~1.4 M thread spans/s)
#: at 20 ms, times the ``concurrency`` streams read at once.
_WINDOW_BYTES = 1 * 1024 * 1024
_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", _WINDOW_BYTES),
]
#: Idle clients kept for reuse, as ADBC connections (several jobs x ``concurrency`` at once).
_MAX_IDLE = 64
#: Idle daemon threads end after this long (s).
_IDLE_S = 60.0

T = TypeVar("T")


class DaemonThreads:
    """Runs calls in daemon threads named ``name``, reusing idle ones, with no bound on their number.

    A call that never returns (a DoGet stalled before its schema, an ADBC open against a stalled
    service) keeps its thread and no other call waits behind it; neither :meth:`close` nor the
    interpreter's exit waits for it.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None]] = []
        self._closed = False

    def submit(self, call: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._run, args=(inbox,), name=self._name, daemon=True).start()
        inbox.put((call, future))
        return future

    def _run(self, inbox: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None]) -> None:
        while True:
            try:
                item = inbox.get(timeout=_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:  # else it was just taken: its call is on the way
                        self._idle.remove(inbox)
                        return
                continue
            if item is None:
                return
            call, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # handed to the waiter, as an executor does
                    future.set_exception(exc)
            del item, call, future  # hold nothing of the call while idle
            with self._lock:
                if self._closed:
                    return
                self._idle.append(inbox)

    def close(self) -> None:
        """Ends the idle threads; busy ones end after their call."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


class DirectQuery:
    """One statement read with one DoGet. Blocking; :meth:`open` and :meth:`next_batch` run in a
    thread of :meth:`DirectClients.submit`, :meth:`cancel` from any thread."""

    def __init__(self, client: fl.FlightClient, sql: str, options: fl.FlightCallOptions, what: str) -> None:
        #: The client the query is sent with, its own while it runs.
        self.client = client
        self._sql = sql
        self._options = options
        self._what = what
        self._lock = threading.Lock()
        self._reader: fl.FlightStreamReader | None = None
        self._cancelled = False
        self._ended = False
        self._received = False

    def open(self) -> None:
        """Sends the DoGet and waits for the stream's schema.

        Raises:
            TraceWorkerError: as every query (:mod:`worker.source.translate`).
        """
        with translate_errors(self._what):
            reader = self.client.do_get(fl.Ticket(statement_ticket(self._sql)), self._options)
        with self._lock:
            self._reader = reader
            cancelled = self._cancelled
        # The schema is the server's answer: a failure from here on is a broken stream, not an
        # unreachable service.
        self._received = True
        if cancelled:  # abandoned while the schema was on its way
            reader.cancel()

    def next_batch(self) -> pa.RecordBatch | None:
        """The next non-empty batch, or None at the end of the stream."""
        reader = self._reader
        if reader is None or self._ended:
            return None
        with translate_errors(self._what, streaming=self._received):
            while True:
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    self._ended = True
                    return None
                batch = chunk.data
                if batch is not None and batch.num_rows:  # (None: application metadata only)
                    return batch

    def cancel(self) -> None:
        """Ends a read blocked in another thread (gRPC's cancel is thread-safe); a DoGet still waiting
        for its schema is cancelled as soon as it has one."""
        with self._lock:
            self._cancelled = True
            reader = self._reader
        if reader is not None:
            reader.cancel()

    def close(self) -> None:
        """Drops the reader, cancelling its call first if the stream did not reach its end (the server
        stops sending); nothing waits for a release, unlike ADBC's streams."""
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None and not self._ended:
            reader.cancel()


class DirectClients:
    """Flight clients for direct-ticket queries: one per concurrent query, idle ones reused.
    Thread-safe.

    Args:
        config: The service's URL, token, TLS and dictionary settings.
        count: Called with ``"connect"`` for each client made and ``"DoGet"`` for each query.
    """

    def __init__(self, config: FlightSqlConfig, count: Callable[[str], None]) -> None:
        self._config = config
        self._count = count
        self._lock = threading.Lock()
        self._idle: list[fl.FlightClient] = []
        self._closed = False
        self._threads = DaemonThreads("flightsql-direct")
        headers = []
        if config.token:
            headers.append((b"authorization", f"Bearer {config.token}".encode()))
        if config.preserve_dictionary:
            headers.append((b"preserve_dictionary", b"true"))
        self._headers = headers

    def _connect(self) -> fl.FlightClient:
        c = self._config
        # gRPC connects lazily: this only builds the channel, so it never blocks.
        client = fl.FlightClient(
            c.url,
            tls_root_certs=c.tls_ca_pem if c.tls_ca_pem else None,
            disable_server_verification=True if c.tls_skip_verify else None,
            generic_options=_CHANNEL_OPTIONS,
        )
        self._count("connect")
        return client

    def query(self, sql: str, headers: Mapping[str, str], what: str) -> DirectQuery:
        """A query of ``sql`` with the call headers (and the configured token and dictionary
        header), on an idle client or a new one; give it back with :meth:`release`.

        Raises:
            SourceUnavailable: the source is closed.
            TraceWorkerError: gRPC refuses the URL (see :mod:`worker.source.translate`).
        """
        with self._lock:
            if self._closed:
                raise SourceUnavailable("the Flight SQL source is closed")
            client = self._idle.pop() if self._idle else None
        if client is None:
            with translate_errors("connect"):
                client = self._connect()
        options = fl.FlightCallOptions(
            headers=[*self._headers, *((k.encode(), v.encode()) for k, v in headers.items() if v)]
        )
        self._count("DoGet")
        return DirectQuery(client, sql, options, what)

    def release(self, query: DirectQuery, *, broken: bool) -> None:
        """Closes ``query`` (once no read of it runs) and keeps its client for reuse, unless the query
        failed in transport (``broken``) or enough are idle."""
        query.close()
        with self._lock:
            if not broken and not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(query.client)

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Runs a blocking call of a :class:`DirectQuery` in a daemon thread (see the module's doc)."""
        return self._threads.submit(call)

    def close(self) -> None:
        """Drops the idle clients (a gRPC client's close ends nothing: calls still running go on)
        and ends the idle threads."""
        with self._lock:
            self._closed = True
            self._idle.clear()
        self._threads.close()
