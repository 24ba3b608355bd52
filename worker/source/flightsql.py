"""The Flight SQL source: ADBC (adbc-driver-flightsql) for the Flight SQL calls, pyarrow.flight for
queries sent as direct tickets.

Only the call path that works against Micromegas is used: ``execute_partitions`` (GetFlightInfo)
then ``read_partition`` (DoGet) per endpoint, which learns the schema from the stream (Micromegas
answers GetFlightInfo with a zero-field schema). Headers are set on the *connection*, because
``read_partition``'s DoGet does not carry statement options; setting a call header again
*appends* a second value, so a header is cleared (empty value) before it is set anew. Since
headers are per connection, each concurrent query gets its own connection from a small pool.

Against a server whose ticket is the statement itself (Micromegas), GetFlightInfo is skipped
(``direct_tickets``, :mod:`worker.source.tickets`): each query is then one DoGet, sent with
pyarrow.flight's client (:mod:`worker.source.direct`), which costs a fraction of the CPU of ADBC's
Go driver per stream. The calls made are counted in :attr:`FlightSqlSource.calls` (the service
exports them on ``/metrics``).

Thread spans of a small process (the thread list's ``nb_objects`` sums to at most
``process_spans_max_objects``) come from one ``process_spans`` query, regrouped per thread
(:mod:`worker.source.regroup`); larger processes, or a thread list without sizes, get one query per
thread, ``concurrency`` at a time. A server that refuses ``process_spans`` is asked per thread
from then on.

ADBC streams read to their end, and their statements, are released in groups by a thread of their
own (:class:`_Releaser`): the driver runs a full Go garbage collection in every release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import adbc_driver_flightsql as fsql
import adbc_driver_manager as adbc
import pyarrow as pa

from worker.errors import (
    BadSourceData,
    ProcessNotFound,
    QueryRejected,
    SourceBroken,
    SourceUnavailable,
    TraceTooLarge,
)
from worker.model import ProcessInfo, ThreadInfo, TimeRange
from worker.source import logs as log_queries
from worker.source import queries
from worker.source.columns import (
    ASYNC_EVENT_KINDS,
    PROCESS_KINDS,
    PROCESS_LIST_KINDS,
    PROCESS_SPAN_KINDS,
    PROCESS_STREAM_KINDS,
    THREAD_KINDS,
    THREAD_SPAN_KINDS,
    BatchChecker,
    Kind,
)
from worker.source.config import FlightSqlConfig
from worker.source.direct import MAX_MESSAGE_BYTES, DaemonThreads, DirectClients, DirectQuery
from worker.source.fetch import ordered_fetch
from worker.source.regroup import by_thread
from worker.source.tickets import is_statement_ticket, statement_partition
from worker.source.translate import translate_errors

__all__ = ["FlightSqlSource", "list_processes"]

_HEADER = fsql.ConnectionOptions.RPC_CALL_HEADER_PREFIX.value
_RANGE_HEADERS = ("query_range_begin", "query_range_end")
#: gRPC's 16 MiB default message size is smaller than one large batch.
_MAX_MESSAGE = str(MAX_MESSAGE_BYTES)
#: Batches the driver prefetches per stream (its default is 5); with the per-thread buffer this
#: bounds the batches held per concurrent fetch.
_DRIVER_QUEUE = "4"
#: Batches queued per thread's stream.
_THREAD_BUFFER = 4
#: Bytes of batches queued by the threads' streams read ahead of the one being consumed, together.
#: About 60 ms of the engine's work (~260 MB/s of thread spans): enough to hide the start of the next
#: stream. Counted in bytes, not batches, so that a server's batch size does not set the worker's
#: memory; with 4 batches per stream ahead and no byte limit, the devserver's 2.4 MB batches made the
#: peak RSS of `generate` grow with a thread's length until the queues were full (measured by
#: heaptrack: 34 MB of gRPC buffers at 2.6 M spans, 88 MB at 10.5 M).
_READ_AHEAD_BYTES = 16 * 1024 * 1024
#: Idle connections kept for reuse; more are opened on demand and closed when released. Several
#: jobs at once each read up to ``concurrency`` streams (8 jobs x 4 = 32): fewer idle ones than
#: that made every small job open and close about one connection.
_MAX_IDLE = 64
#: How long ``aclose`` waits for the connections to close without a batch timeout (s).
_CLOSE_WAIT_S = 5.0
#: Small results (process, thread list) at most this long become rows on the event loop; longer ones
#: in a worker thread.
_INLINE_ROWS = 256
#: Streams of a process that are not threads (log, metrics, ...) read beyond ``max_threads`` in the
#: combined process and thread list query before it gives way to the two queries.
_OTHER_STREAMS = 64
#: A ``process_spans`` answer is regrouped on the event loop up to this many rows (a few ms at most).
_INLINE_REGROUP_ROWS = 65_536
#: A ``process_spans`` answer longer than this many times the object count it was chosen for is
#: abandoned (the thread list understated the size): the threads are then read one by one, so memory
#: stays bounded by the setting whatever the server says.
_ONE_QUERY_SLACK = 2
#: Finished streams wait at most this long (seconds) to be released together with others.
_RELEASE_DELAY_S = 0.25
#: ... and at most this many wait: more are released at once.
_RELEASE_MAX_PENDING = 64
#: Threads that release a group's items at the same time.
_RELEASE_THREADS = 16


log = logging.getLogger("worker.source.flightsql")


def _batch_bytes(batch: pa.RecordBatch) -> int:
    return int(batch.nbytes)


class _Calls:
    """Flight SQL calls made (``GetFlightInfo``, ``DoGet``) and connections opened (``connect``);
    counted from worker threads, read by the metrics endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


class _Tickets:
    """Whether queries skip GetFlightInfo: decided by the setting, or (``auto``) learnt from the
    server's first answer."""

    def __init__(self, mode: str, calls: _Calls) -> None:
        self.direct: bool | None = {"on": True, "off": False}.get(mode)
        self.calls = calls

    def learn(self, partitions: Sequence[bytes], sql: str) -> None:
        if self.direct is None:
            self.direct = len(partitions) == 1 and is_statement_ticket(partitions[0], sql)


class _Releaser:
    """Releases finished ADBC streams and statements in groups, in a thread of its own.

    The Go driver runs a full garbage collection (``runtime.GC``) in each stream's and statement's
    release: 2-3 ms of CPU each with its side effects (the releasing thread sweeps the heap,
    yielding to the Go scheduler after each span; gRPC's buffer pools are emptied and grown again),
    a third of a small job's source CPU (three streams). Collections asked for while one runs are
    all served by the next one, so a group released from several threads at once costs one or two
    collections instead of one per stream. A stream read to its end holds no rows (they were handed
    on), so one that waits up to :data:`_RELEASE_DELAY_S` costs little memory.

    Each item is a callable that releases one query's resources in order; its ADBC / Arrow errors
    are ignored (the resources are abandoned either way). :meth:`flush` releases everything waiting
    before it returns: call it before closing a connection whose streams may still wait here.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: list[Callable[[], None]] = []
        #: Held while a group is released, so that :meth:`flush` returns only when it is done.
        self._busy = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self._worker: threading.Thread | None = None
        self._stopped = False

    @property
    def pending(self) -> int:
        """Items waiting to be released."""
        with self._cond:
            return len(self._pending)

    def put(self, release: Callable[[], None]) -> None:
        """Release later, with others (at once when stopped)."""
        with self._cond:
            if not self._stopped:
                self._pending.append(release)
                if self._worker is None:
                    self._threads = ThreadPoolExecutor(
                        _RELEASE_THREADS, thread_name_prefix="flightsql-release"
                    )
                    self._worker = threading.Thread(target=self._run, name="flightsql-releaser", daemon=True)
                    self._worker.start()
                self._cond.notify()
                return
        _release_quietly(release)

    def flush(self) -> None:
        """Release everything waiting, and wait for a group being released (blocking)."""
        with self._busy:
            with self._cond:
                group, self._pending = self._pending, []
            threads = self._threads
            if len(group) == 1 or threads is None:
                for release in group:
                    _release_quietly(release)
            else:
                # In waves, each item of a wave from its own thread at the same time: one or two
                # collections serve a wave (a thread that moved on to another item while the others
                # still wait would ask for one more).
                for start in range(0, len(group), _RELEASE_THREADS):
                    wave = group[start : start + _RELEASE_THREADS]
                    wait([threads.submit(_release_quietly, release) for release in wave])

    def close(self) -> None:
        """Release everything waiting and stop; later items are released at once."""
        with self._cond:
            self._stopped = True
            worker, self._worker = self._worker, None
            self._cond.notify()
        if worker is not None:
            worker.join()
        self.flush()
        if self._threads is not None:
            self._threads.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                # Let more gather, up to the delay or the cap.
                deadline = time.monotonic() + _RELEASE_DELAY_S
                while not self._stopped and len(self._pending) < _RELEASE_MAX_PENDING:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._stopped:
                    return  # close() releases the rest
            try:
                self.flush()
            except Exception:  # the thread must outlive one bad release
                log.exception("releasing finished Flight SQL streams failed")


def _release_quietly(release: Callable[[], None]) -> None:
    with contextlib.suppress(adbc.Error, OSError, pa.ArrowException):
        release()


class _Connection:
    """One ADBC connection and the call headers currently set on it."""

    def __init__(self, raw: adbc.AdbcConnection) -> None:
        self.raw = raw
        self.headers: dict[str, str] = {}

    def set_headers(self, headers: Mapping[str, str]) -> None:
        for name in _RANGE_HEADERS:
            wanted = headers.get(name, "")
            if self.headers.get(name, "") == wanted:
                continue
            # Clear first: setting a call header again adds a second value, and servers read the first.
            self.raw.set_options(**{_HEADER + name: ""})
            if wanted:
                self.raw.set_options(**{_HEADER + name: wanted})
            self.headers[name] = wanted


class _Query:
    """One statement, read partition by partition. Blocking; each method runs in a worker thread."""

    def __init__(
        self,
        conn: _Connection,
        sql: str,
        headers: Mapping[str, str],
        what: str,
        tickets: _Tickets,
        *,
        releaser: _Releaser,
    ) -> None:
        self._conn = conn
        self._tickets = tickets
        self._releaser = releaser
        self._sql = sql
        self._headers = headers
        self._what = what
        self._stmt: adbc.AdbcStatement | None = None
        self._parts: list[bytes] = []
        self._reader: pa.RecordBatchReader | None = None
        #: Partitions' readers read to their end, released with the statement.
        self._finished: list[pa.RecordBatchReader] = []
        self._received = False

    def open(self) -> None:
        with translate_errors(self._what):
            self._conn.set_headers(self._headers)
            if self._tickets.direct:
                self._parts = [statement_partition(self._sql)]
                return
            stmt = adbc.AdbcStatement(self._conn.raw)
            self._stmt = stmt
            stmt.set_options(**{fsql.StatementOptions.QUEUE_SIZE.value: _DRIVER_QUEUE})
            stmt.set_sql_query(self._sql)
            self._tickets.calls.add("GetFlightInfo")
            partitions, _schema, _rows = stmt.execute_partitions()
            self._parts = list(partitions)
            self._tickets.learn(self._parts, self._sql)

    def next_batch(self) -> pa.RecordBatch | None:
        """The next non-empty batch, or None at the end of the last partition."""
        with translate_errors(self._what, streaming=self._received):
            while True:
                if self._reader is None:
                    if not self._parts:
                        return None
                    self._tickets.calls.add("DoGet")
                    handle = self._conn.raw.read_partition(self._parts.pop(0))
                    self._reader = pa.RecordBatchReader._import_from_c(handle.address)
                try:
                    batch = self._reader.read_next_batch()
                except StopIteration:
                    self._finished.append(self._reader)
                    self._reader = None
                    continue
                self._received = True
                if batch.num_rows:
                    return batch

    def cancel(self) -> None:
        """Ends a call blocked in another thread (ADBC allows cancel from any thread). The
        connection's cancel is what ends a ``read_partition`` stream (the statement's does not);
        the connection stays usable."""
        stmt = self._stmt
        with contextlib.suppress(adbc.Error):
            if stmt is not None:
                stmt.cancel()
            self._conn.raw.cancel()

    def close(self) -> None:
        """Releases the readers and the statement: later, with others (:class:`_Releaser`), when every
        reader was read to its end; at once otherwise (an abandoned stream may hold batches and a
        call in flight)."""
        abandoned = self._reader
        readers = [*self._finished, *([] if abandoned is None else [abandoned])]
        stmt = self._stmt
        self._finished, self._reader, self._stmt = [], None, None
        if not readers and stmt is None:
            return

        def release() -> None:
            try:
                for reader in readers:
                    reader.close()
            finally:
                if stmt is not None:
                    stmt.close()

        if abandoned is None:
            self._releaser.put(release)
        else:
            _release_quietly(release)


class _Pool:
    """ADBC connections, one per concurrent query; opened on demand, idle ones reused.

    Unbounded on purpose: each fetch bounds its own concurrency, and a shared hard cap could
    deadlock two jobs whose fetch-ahead tasks hold each other's connections. Thread-safe: a
    connection may come back from the worker thread that finished its last read. The database is
    closed only once every connection is back (closing it under a live connection crashes).
    """

    def __init__(self, config: FlightSqlConfig, calls: _Calls, releaser: _Releaser) -> None:
        self._config = config
        self._calls = calls
        self._releaser = releaser
        self._lock = threading.Lock()
        self._db: adbc.AdbcDatabase | None = None
        self._idle: list[_Connection] = []
        self._out = 0
        self._closed = False

    def _db_options(self) -> dict[str, str]:
        c = self._config
        options = {fsql.DatabaseOptions.WITH_MAX_MSG_SIZE.value: _MAX_MESSAGE}
        if c.token:
            options[fsql.DatabaseOptions.AUTHORIZATION_HEADER.value] = f"Bearer {c.token}"
        if c.tls_ca_pem:
            options[fsql.DatabaseOptions.TLS_ROOT_CERTS.value] = c.tls_ca_pem.decode(errors="replace")
        if c.tls_skip_verify:
            options[fsql.DatabaseOptions.TLS_SKIP_VERIFY.value] = "true"
        if c.preserve_dictionary:
            options[_HEADER + "preserve_dictionary"] = "true"
        return options

    def take_idle(self) -> _Connection | None:
        """An idle connection, if there is one (never blocks on the network)."""
        with self._lock:
            if self._closed:
                raise SourceUnavailable("the Flight SQL source is closed")
            if not self._idle:
                return None
            self._out += 1
            return self._idle.pop()

    def open_new(self) -> _Connection:
        """A new connection (blocking: opening talks to the service). The lock is not held while
        connecting, so a stalled service cannot freeze callers of :meth:`take_idle` or :meth:`release`
        (the event loop among them)."""
        with translate_errors("connect"):
            with self._lock:
                if self._closed:
                    raise SourceUnavailable("the Flight SQL source is closed")
                if self._db is None:
                    self._db = fsql.connect(self._config.url, db_kwargs=self._db_options())
                db = self._db
                self._out += 1  # counted before connecting: the database stays open under it
            try:
                self._calls.add("connect")
                return _Connection(adbc.AdbcConnection(db))
            except BaseException:
                with self._lock:
                    self._out -= 1
                self._close_db_if_idle()
                raise

    def release(self, conn: _Connection, *, discard: bool = False) -> None:
        """Back to the idle list, or closed (``discard``: it failed in transport; or no room).

        A connection is closed in a thread of its own (:meth:`_close_in_thread`): the driver's
        close sends CloseSession and waits for the answer with no deadline, so closing on a
        stalled server blocks, and must hold neither the event loop nor the executor (whose
        shutdown waits for its threads). It counts as out until closed.
        """
        with self._lock:
            if not discard and not self._closed and len(self._idle) < _MAX_IDLE:
                self._out -= 1
                self._idle.append(conn)
                return
        self._close_in_thread(conn)

    def _close_in_thread(self, conn: _Connection) -> threading.Thread:
        thread = threading.Thread(target=self._close, args=(conn,), name="flightsql-close", daemon=True)
        thread.start()
        return thread

    def _close(self, conn: _Connection) -> None:
        self._releaser.flush()  # its finished streams may still wait there
        _close_quietly(conn.raw)
        with self._lock:
            self._out -= 1
        self._close_db_if_idle()

    def close(self, wait_s: float) -> None:
        """Closes the idle connections, each in a thread of its own, and waits at most ``wait_s``
        seconds for them (blocking); a close still waiting on a stalled server goes on in its
        daemon thread, and the database closes after the last one."""
        self._releaser.close()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            # Out while they close: the database must not close under them.
            self._out += len(idle)
        closing = [self._close_in_thread(conn) for conn in idle]
        self._close_db_if_idle()
        deadline = time.monotonic() + wait_s
        for thread in closing:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _close_db_if_idle(self) -> None:
        with self._lock:
            if not self._closed or self._out or self._db is None:
                return
            db, self._db = self._db, None
        _close_quietly(db)


def _close_quietly(obj: adbc.AdbcConnection | adbc.AdbcDatabase) -> None:
    with contextlib.suppress(adbc.Error):
        obj.close()


def _range_headers(time_range: TimeRange) -> dict[str, str]:
    return {
        "query_range_begin": queries.header_time(time_range.begin_ns, round_up=False),
        "query_range_end": queries.header_time(time_range.end_ns, round_up=True),
    }


def _as_ints(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timestamps as int64 epoch ns, so that ``to_pylist`` keeps nanoseconds (a zero-copy view: the
    same values as a cast, without a compute kernel's overhead per column)."""
    columns = [c.view(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _to_rows(batches: Sequence[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [row for batch in batches for row in _as_ints(batch).to_pylist()]


def _ns(value: Any) -> int | None:
    return None if value is None else int(value)


def _count(value: Any) -> int | None:
    """An object count from the thread list, or None (missing, or not a non-negative integer)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _process_info(row: Mapping[str, Any]) -> ProcessInfo:
    return ProcessInfo(
        process_id=_text(row["process_id"]),
        exe=_text(row["exe"]),
        username=_text(row.get("username")),
        realname=_text(row.get("realname")),
        computer=_text(row.get("computer")),
        distro=_text(row.get("distro")),
        cpu_brand=_text(row.get("cpu_brand")),
        start_time_ns=_ns(row.get("start_time")),
        first_time_ns=_ns(row["first_time"]),
        last_time_ns=_ns(row["last_time"]),
    )


def _thread_info(row: Mapping[str, Any]) -> ThreadInfo:
    return ThreadInfo(
        stream_id=_text(row["stream_id"]),
        thread_name=_text(row["thread_name"]),
        thread_id=_text(row["thread_id"]),
        objects=_count(row.get("nb_objects")),
    )


def _too_many_threads(limit: int) -> str:
    return f"the process has more than {limit} threads in the range (flightsql_max_threads)"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class FlightSqlSource:
    """:class:`~worker.source.Source` over an Arrow Flight SQL service speaking Micromegas's SQL.

    Args:
        config: Where the service is and how to talk to it.
    """

    def __init__(self, config: FlightSqlConfig) -> None:
        self._config = config
        self._calls = _Calls()
        self._tickets = _Tickets(config.direct_tickets, self._calls)
        self._releaser = _Releaser()
        self._pool = _Pool(config, self._calls, self._releaser)
        #: Direct-ticket queries (pyarrow.flight).
        self._direct = DirectClients(config, self._calls.add)
        #: ADBC connection opens (see :meth:`_connection`).
        self._opens = DaemonThreads("flightsql-connect")
        #: Whether the server has ``process_spans``: None until it refuses it.
        self._has_process_spans: bool | None = None
        #: Whether the thread list asks for ``nb_objects`` (False once the server refused it).
        self._sizes = True
        # Blocking reads get threads of their own, so that many concurrent fetches (several jobs
        # x `concurrency`) never queue behind each other in asyncio's small default executor.
        self._executor = ThreadPoolExecutor(
            max_workers=max(8, 4 * config.concurrency), thread_name_prefix="flightsql"
        )

    @property
    def calls(self) -> Mapping[str, int]:
        """Flight SQL calls made so far, by name: ``GetFlightInfo``, ``DoGet`` (one per query with
        direct tickets) and ``connect`` (ADBC connections opened, and pyarrow.flight clients made
        for direct tickets)."""
        return self._calls.counts

    async def _stream(
        self, sql: str, headers: Mapping[str, str], what: str, check: BatchChecker
    ) -> AsyncGenerator[pa.RecordBatch, None]:
        """Batches of one query, each read in a worker thread, on a connection of its own: with
        direct tickets one DoGet over pyarrow.flight, else over ADBC."""
        query: DirectQuery | _Query
        conn: _Connection | None = None
        submit: Callable[[Callable[[], pa.RecordBatch | None]], Future[pa.RecordBatch | None]]
        if self._tickets.direct:
            query = self._direct.query(sql, headers, what)
            submit = self._direct.submit
        else:
            conn = await self._connection(what)
            query = _Query(conn, sql, headers, what, self._tickets, releaser=self._releaser)
            submit = self._executor.submit

        def finish(broken: bool) -> None:
            if isinstance(query, DirectQuery):
                self._direct.release(query, broken=broken)
            else:
                query.close()
                assert conn is not None
                self._pool.release(conn, discard=broken)

        # The concurrent future, not an asyncio wrapper: cancelling the wrapper marks it done while
        # the thread may still be reading, and closing the reader under that read crashes.
        running: Future[Any] | None = None
        broken = False
        try:

            def next_checked() -> pa.RecordBatch | None:
                # Validation and casts are linear in the batch: done here, off the event loop.
                batch = query.next_batch()
                return None if batch is None else check(batch)

            def open_and_first() -> pa.RecordBatch | None:
                query.open()  # one thread hop for the plan and the first batch, not two
                return next_checked()

            step = open_and_first
            while True:
                running = submit(step)
                batch = await self._answer(running, what)
                if batch is None:
                    break
                yield batch
                step = next_checked
        except (SourceUnavailable, SourceBroken):
            # Not back to the pool: its gRPC channel may sit in reconnect backoff (up to minutes after
            # a long outage) and fail every query fast; a new connection dials at once.
            broken = True
            raise
        finally:
            if running is not None and not running.done():
                # Abandoned while a read runs in its thread: end that read; the thread then closes
                # the query and returns its connection, once it has let go of them.
                query.cancel()
                running.add_done_callback(lambda _: finish(broken))
            else:
                finish(broken)

    async def _connection(self, what: str) -> _Connection:
        """An idle connection, or a new one opened in a worker thread within the batch timeout."""
        conn = self._pool.take_idle()
        if conn is not None:
            return conn
        # In a daemon thread, not the executor: the driver's open talks to the service with no
        # deadline of ours (gRPC's connect deadline, ~20 s), and aclose must not wait for an open
        # the batch timeout gave up on (a late connection is closed by _late).
        opening = self._opens.submit(self._pool.open_new)
        try:
            conn = await self._answer(opening, what)
        except BaseException:
            # A connection that opens after we gave up goes back (closed): nobody will use it.
            def _late(done: Future[Any]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._pool.release(done.result(), discard=True)

            opening.add_done_callback(_late)
            raise
        assert isinstance(conn, _Connection)
        return conn

    async def _answer(self, running: Future[Any], what: str) -> Any:
        """The result of a blocking read, waiting at most the batch timeout.

        Raises:
            SourceBroken: no answer in time (a stalled service or network); the read is cancelled
                by the caller's cleanup.
        """
        timeout = self._config.batch_timeout_s
        if timeout is None:
            return await asyncio.wrap_future(running)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can drop a cancellation of this
            # task that arrives as the read completes (cpython#86296).
            async with asyncio.timeout(timeout):
                return await asyncio.wrap_future(running)
        except TimeoutError:
            raise SourceBroken(
                f"the Flight SQL service sent nothing for {timeout:g} s while reading {what}"
            ) from None

    async def _rows(
        self,
        sql: str,
        headers: Mapping[str, str],
        what: str,
        kinds: Mapping[str, Kind],
        *,
        limit: int,
        too_many: str | None = None,
    ) -> list[dict[str, Any]]:
        """A small result as rows (process description, thread list, process list).

        At most ``limit`` rows are read: past it the read stops, and fails with
        :class:`TraceTooLarge` (``too_many`` as its message) when that is given. The rows are made
        in a worker thread: a hostile answer of millions of rows never reaches the event loop.
        """
        check = BatchChecker(what, kinds)
        batches: list[pa.RecordBatch] = []
        count = 0
        stream = self._stream(sql, headers, what, check)
        try:
            async for batch in stream:
                if count + batch.num_rows > limit:
                    if too_many is not None:
                        raise TraceTooLarge(too_many)
                    batches.append(batch.slice(0, limit - count))
                    break
                batches.append(batch)
                count += batch.num_rows
        finally:
            await stream.aclose()
        if sum(b.num_rows for b in batches) <= _INLINE_ROWS:
            return _to_rows(batches)  # a thread hop costs more than a few rows
        return await asyncio.to_thread(_to_rows, batches)

    async def process(self, process_id: str) -> ProcessInfo:
        sql = queries.process_sql(process_id)
        rows = await self._rows(sql, {}, "process query", PROCESS_KINDS, limit=1)
        if not rows:
            raise ProcessNotFound(f"no process {process_id.lower()} in the Flight SQL service")
        return _process_info(rows[0])

    async def process_and_threads(self, process_id: str) -> tuple[ProcessInfo, list[ThreadInfo] | None]:
        """The process, and in the same query its threads for a trace of its whole life (what
        :meth:`threads` gives for that range); threads None when the process has more streams than
        ``max_threads`` plus a few others: ask :meth:`threads` then (it enforces the limit).

        Raises:
            InvalidRequest, ProcessNotFound: as :meth:`process`.
            TraceTooLarge: more than ``max_threads`` threads.
        """
        most = self._config.max_threads + _OTHER_STREAMS
        rows = await self._sized(
            lambda sizes: queries.process_streams_sql(process_id, sizes=sizes),
            {}, "process query", PROCESS_STREAM_KINDS, limit=most + 1,
        )  # fmt: skip
        if not rows:
            raise ProcessNotFound(f"no process {process_id.lower()} in the Flight SQL service")
        if len(rows) > most:
            # Cut off: the first and last times of the rows read are not the process's.
            return await self.process(process_id), None
        firsts = [t for t in (_ns(row["first_time"]) for row in rows) if t is not None]
        lasts = [t for t in (_ns(row["last_time"]) for row in rows) if t is not None]
        whole = {"first_time": min(firsts, default=None), "last_time": max(lasts, default=None)}
        process = _process_info({**rows[0], **whole})
        threads = [_thread_info(row) for row in rows if row["cpu"] is True]
        limit = self._config.max_threads
        if len(threads) > limit:
            raise TraceTooLarge(_too_many_threads(limit))
        return process, threads

    async def threads(self, process_id: str, time_range: TimeRange) -> list[ThreadInfo]:
        limit = self._config.max_threads
        rows = await self._sized(
            lambda sizes: queries.threads_sql(process_id, sizes=sizes),
            _range_headers(time_range), "thread list query", THREAD_KINDS, limit=limit,
            too_many=_too_many_threads(limit),
        )  # fmt: skip
        return [_thread_info(row) for row in rows]

    async def _sized(
        self,
        sql: Callable[[bool], str],
        headers: Mapping[str, str],
        what: str,
        kinds: Mapping[str, Kind],
        **limits: Any,
    ) -> list[dict[str, Any]]:
        """Rows of a thread list query, with the threads' ``nb_objects`` while the server has it: a
        refusal naming it sends the query again without (and later ones), so the threads have no
        size and are read one by one, as before sizes were asked."""
        if self._sizes:
            try:
                return await self._rows(sql(True), headers, what, kinds, **limits)
            except QueryRejected as exc:
                if "nb_objects" not in str(exc):
                    raise
                self._sizes = False
        return await self._rows(sql(False), headers, what, kinds, **limits)

    def _one_query_limit(self, threads: Sequence[ThreadInfo]) -> int | None:
        """The object count that makes ``threads`` one ``process_spans`` query, or None (per thread)."""
        limit = self._config.process_spans_max_objects
        if limit <= 0 or self._has_process_spans is False or len(threads) < 2:
            return None  # one thread is one query either way
        sizes = [t.objects for t in threads]
        if any(size is None for size in sizes) or sum(s for s in sizes if s is not None) > limit:
            return None
        return limit

    async def thread_spans(
        self, threads: Sequence[ThreadInfo], time_range: TimeRange, *, process_id: str | None = None
    ) -> AsyncIterator[tuple[ThreadInfo, pa.RecordBatch | None]]:
        limit = None if process_id is None else self._one_query_limit(threads)
        if process_id is not None and limit is not None:
            grouped = await self._process_spans(process_id, threads, time_range, limit * _ONE_QUERY_SLACK)
            if grouped is not None:
                for thread, table in zip(threads, grouped, strict=True):
                    for batch in table.to_batches():
                        yield thread, batch
                    yield thread, None
                return
        # Build (and so validate) every query before the first one is sent.
        sqls = [queries.thread_spans_sql(t.stream_id, time_range) for t in threads]
        headers = _range_headers(time_range)
        check = BatchChecker("thread spans query", THREAD_SPAN_KINDS)

        def open_stream(index: int) -> AsyncGenerator[pa.RecordBatch, None]:
            what = f"thread spans query (stream {threads[index].stream_id})"
            return self._stream(sqls[index], headers, what, check)

        fetch = ordered_fetch(
            len(threads),
            open_stream,
            concurrency=self._config.concurrency,
            buffer=_THREAD_BUFFER,
            max_bytes=_READ_AHEAD_BYTES,
            size=_batch_bytes,
        )
        try:
            async for index, batch in fetch:
                yield threads[index], batch
        finally:
            await fetch.aclose()

    async def _process_spans(
        self, process_id: str, threads: Sequence[ThreadInfo], time_range: TimeRange, max_rows: int
    ) -> list[pa.Table] | None:
        """Every thread's spans from one ``process_spans`` query, grouped per thread (in the order
        of ``threads``), or None when the threads must be read one by one instead: the server
        refused the query, failed while answering it, or sent rows the checks reject (nothing was
        handed on, so reading per thread starts clean and reports any real fault itself), or more
        than ``max_rows`` rows."""
        sql = queries.process_spans_sql(process_id, time_range)
        what = "process spans query"
        batches: list[pa.RecordBatch] = []
        rows = 0
        stream = self._stream(sql, _range_headers(time_range), what, BatchChecker(what, PROCESS_SPAN_KINDS))
        try:
            async for batch in stream:
                rows += batch.num_rows
                if rows > max_rows:
                    return None
                batches.append(batch)
        except QueryRejected as exc:
            if not batches and "process_spans" in str(exc).lower():
                self._has_process_spans = False  # a server without the table function
            return None
        except (BadSourceData, SourceBroken):
            # Rejected rows, or the server failing inside process_spans (upstream's thread list
            # panicked on unnamed threads until a fix not yet released, micromegas.md §5.1): the
            # per-thread queries do not run that code, and they report any fault that is real.
            return None
        finally:
            await stream.aclose()
        ids = [t.stream_id for t in threads]
        if rows <= _INLINE_REGROUP_ROWS:
            return by_thread(batches, ids, queries.THREAD_SPAN_COLUMNS)
        return await asyncio.to_thread(by_thread, batches, ids, queries.THREAD_SPAN_COLUMNS)

    async def async_events(
        self, process_id: str, time_range: TimeRange, *, lookback_ns: int = 0
    ) -> AsyncIterator[pa.RecordBatch]:
        sql = queries.async_events_sql(process_id, time_range)
        check = BatchChecker("async events query", ASYNC_EVENT_KINDS)
        queries_ = []
        if lookback_ns > 0:
            begin = time_range.begin_ns
            lookback = TimeRange(begin - lookback_ns, begin)
            queries_.append(
                (
                    queries.async_lookback_sql(process_id, begin, lookback_ns),
                    lookback,
                    "async look-back query",
                )
            )
        queries_.append((sql, time_range, "async events query"))
        for text, window, what in queries_:
            stream = self._stream(text, _range_headers(window), what, check)
            try:
                async for batch in stream:
                    yield batch
            finally:
                await stream.aclose()

    async def log_entries(self, process_id: str, time_range: TimeRange) -> AsyncIterator[pa.RecordBatch]:
        sql = log_queries.log_entries_sql(process_id, time_range)
        async for batch in self._view(sql, time_range, "log entries query", log_queries.LOG_ENTRY_KINDS):
            yield batch

    async def measures(self, process_id: str, time_range: TimeRange) -> AsyncIterator[pa.RecordBatch]:
        sql = log_queries.measures_sql(process_id, time_range)
        async for batch in self._view(sql, time_range, "measures query", log_queries.MEASURE_KINDS):
            yield batch

    async def _view(
        self, sql: str, time_range: TimeRange, what: str, kinds: Mapping[str, Kind]
    ) -> AsyncIterator[pa.RecordBatch]:
        stream = self._stream(sql, _range_headers(time_range), what, BatchChecker(what, kinds))
        try:
            async for batch in stream:
                yield batch
        finally:
            await stream.aclose()

    async def query_rows(
        self,
        sql: str,
        what: str,
        kinds: Mapping[str, Kind],
        time_range: TimeRange | None = None,
        *,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """A small result as Python rows (timestamps as integer epoch ns), checked against ``kinds``;
        with the ``query_range_*`` headers when ``time_range`` is given; at most ``limit`` rows are
        read (the rest is dropped). For metadata queries (counts, log lines), never for spans.

        Raises:
            TraceWorkerError: as every query (see :mod:`worker.source.translate`).
        """
        headers = _range_headers(time_range) if time_range is not None else {}
        return await self._rows(sql, headers, what, kinds, limit=limit)

    async def processes(
        self, limit: int = 100, *, search: str | None = None, offset: int = 0
    ) -> list[ProcessInfo]:
        """The most recently started processes, newest first (``search``: id or exe contains it)."""
        sql = queries.processes_sql(limit, search=search, offset=offset)
        rows = await self._rows(sql, {}, "process list query", PROCESS_LIST_KINDS, limit=limit)
        return [
            ProcessInfo(
                process_id=_text(row["process_id"]),
                exe=_text(row["exe"]),
                username=_text(row.get("username")),
                computer=_text(row.get("computer")),
                start_time_ns=_ns(row["start_time"]),
                last_time_ns=_ns(row["last_time"]),
            )
            for row in rows
        ]

    async def ping(self) -> None:
        check = BatchChecker("ping", {})
        stream = self._stream("SELECT 1 AS one", {}, "ping", check)
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        """Ends the source: waits for running ADBC reads (each ends by itself or by its batch timeout),
        then closes the connections, waiting for them at most the batch timeout (5 s without one);
        a close the server does not answer goes on in a daemon thread."""
        # Let running reads end first: a connection must not close under a read in another thread.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        # Bounded: closing a connection waits for the server, which may be the thing that stalled.
        wait_s = self._config.batch_timeout_s
        await asyncio.to_thread(self._pool.close, _CLOSE_WAIT_S if wait_s is None else wait_s)
        # Direct reads end by themselves or by their cancel; a DoGet stalled before its schema is
        # left to its daemon thread (see worker.source.direct).
        self._direct.close()
        self._opens.close()


async def list_processes(config: FlightSqlConfig, limit: int = 100) -> list[ProcessInfo]:
    """The processes the Flight SQL service knows, newest first (at most ``limit``), over one
    short-lived connection (``trace-worker processes`` and scripts).

    Raises:
        worker.errors.TraceWorkerError: the service is unreachable or refuses (``code`` says which).
    """
    source = FlightSqlSource(config)
    try:
        return await source.processes(limit)
    finally:
        await source.aclose()
