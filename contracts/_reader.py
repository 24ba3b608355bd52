"""The client's shared stream reader: one task and one connection follow every job stream.

On a Redis Cluster one XREAD may only name streams of one hash slot (a job's two streams share
its ``{<job_id>}`` slot; two jobs almost never do): the reader groups the streams of each round by
slot and sends one XREAD per slot, all in one pipeline (one round trip per master, in parallel).

Part of :mod:`contracts.client`; imports redis and the stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from contracts._runs import UNREACHABLE, RedisLike, unreachable
from contracts.client_errors import ClientError, ConnectionLost
from contracts.redis_cancel import honour_cancellation, honour_cluster_cancellation

__all__ = ["StreamReader", "Subscription"]

#: What the reader retries through: Redis unreachable, or a cluster client's own complaints (the
#: ones that mean "unreachable" are told apart by :func:`contracts._runs.unreachable`).
_RETRIED: tuple[type[BaseException], ...] = (*UNREACHABLE, RedisClusterException)
#: Longest XREAD BLOCK on a cluster (there is no connection id to interrupt it with, so a new
#: follower waits at most this long).
CLUSTER_BLOCK_MS = 200
#: First pause after a full cycle of rounds without BLOCK that read nothing (doubled up to
#: IDLE_MAX_MS); see :class:`StreamReader`.
IDLE_MS = 10
IDLE_MAX_MS = 200
#: Shortest cycle of rounds without BLOCK while entries flow (bounds the reads a busy client sends).
CYCLE_MIN_MS = 50


@dataclass(eq=False)
class Subscription:
    key: str
    last_id: str
    queue: asyncio.Queue[tuple[dict[Any, Any], int] | BaseException] = field(default_factory=asyncio.Queue)
    reader: StreamReader | None = None
    #: Bytes of the entries waiting in ``queue``.
    buffered: int = 0

    async def get(self) -> dict[Any, Any]:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        fields, size = item
        self.buffered -= size
        if self.reader is not None:
            self.reader.consumed(self, size)
        return fields


class StreamReader:
    """One task and one connection reading every followed job stream with XREAD.

    Positions are kept per follower, so a reconnect resumes after the last entry each one got.
    Memory is bounded whatever the number of followers: a follower with :attr:`BACKLOG` entries
    waiting is left out of the reads until it has room (a slow follower never slows the others),
    all followers together hold at most ``max_buffered_bytes``, and one round asks for at most as
    many streams (taken round-robin, so every job progresses) as fit in what is left of that budget.

    When one round covers every stream with a ready follower, it blocks (``XREAD BLOCK``,
    ``block_ms``; a new follower interrupts it with CLIENT UNBLOCK). When there are more such
    streams than one round takes, blocking on one window would hold back entries of the others
    (up to ``block_ms`` per window), so the rounds go without BLOCK, window after window. A whole
    cycle of windows takes at least :data:`CYCLE_MIN_MS` while entries flow (bounding the reads a
    busy client sends); after a cycle that brought nothing the reader pauses, :data:`IDLE_MS`
    doubling up to :data:`IDLE_MAX_MS` (a new follower or a drained backlog ends any wait at once).

    On a Redis Cluster (``cluster=True``) the connection is a ``RedisCluster`` of its own and a
    round reads each hash slot's streams with its own XREAD, pipelined (one round trip per
    master). It blocks only when the round covers every ready stream and they share one slot (one
    job followed: its two streams), for at most :data:`CLUSTER_BLOCK_MS` (there is no connection
    to interrupt); otherwise it goes without BLOCK as above. An idle follower then hears of a new
    entry within about 200 ms, at the cost of about five pipelined round trips a second to each
    master holding followed streams.
    """

    #: Entries read per stream per XREAD, and how many a follower may have waiting.
    COUNT = 2
    BACKLOG = 8

    def __init__(
        self,
        *,
        redis_url: str,
        client_name: str,
        commands: RedisLike,
        block_ms: int,
        reconnect_timeout_s: float,
        max_buffered_bytes: int,
        cluster: bool = False,
    ) -> None:
        self._redis_url = redis_url
        self._client_name = client_name
        #: The client's command pool, used to interrupt the reader's blocked XREAD.
        self._commands = commands
        self._block_ms = block_ms
        self._reconnect_timeout_s = reconnect_timeout_s
        self._budget = max_buffered_bytes
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cluster = cluster
        self._idle_ms = IDLE_MS
        #: Streams with a ready follower (set by :meth:`_streams`), and whether the round covers them all.
        self._ready_keys: set[str] = set()
        self._covering = True
        #: The cycle of rounds without BLOCK under way: streams read, whether any brought an
        #: entry, when it began (monotonic).
        self._cycle: set[str] = set()
        self._cycle_busy = False
        self._cycle_start = 0.0
        self._conn: RedisLike | None = None
        self._conn_id: int | None = None
        self._blocked = False
        self._unblocking = False
        self._buffered = 0
        #: Largest entry seen so far (what one more entry may cost); chunks are about 1 MiB.
        self._entry_size = 1024 * 1024
        self._next = 0
        #: Where the XREAD in flight started, per stream: its entries are contiguous after that
        #: id, so only a follower already at or past it may take them (see :meth:`_dispatch`).
        self._reading: dict[str, str] = {}

    def subscribe(self, key: str, from_id: str) -> Subscription:
        sub = Subscription(key=key, last_id=from_id, reader=self)
        self._subs[key].add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="trace-client-reader")
        self._wake(interrupt=True)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
        self._buffered -= sub.buffered
        sub.buffered = 0
        sub.reader = None
        self._wake(interrupt=False)

    def consumed(self, sub: Subscription, size: int) -> None:
        self._buffered -= size
        # Interrupt a blocked XREAD only when this follower just became readable again.
        self._wake(interrupt=sub.queue.qsize() == self.BACKLOG - self.COUNT)

    def _wake(self, *, interrupt: bool) -> None:
        self._changed.set()
        if interrupt and self._blocked and self._conn_id is not None and not self._unblocking:
            # Interrupt the XREAD in progress so the new set of streams is read at once.
            self._unblocking = True
            asyncio.create_task(self._unblock(self._conn_id))  # noqa: RUF006 - fire and forget

    async def _unblock(self, conn_id: int) -> None:
        try:
            with contextlib.suppress(RedisError, OSError):
                await self._commands.client_unblock(conn_id)
        finally:
            self._unblocking = False

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Not suppress(CancelledError): that would also swallow a cancellation of our caller.
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._conn is not None:
            await self._conn.aclose()
            if isinstance(self._conn, aioredis.Redis):
                await self._conn.connection_pool.disconnect()
            self._conn = None

    def _connection(self) -> RedisLike:
        if self._conn is None:
            name = f"{self._client_name}-reader"
            if self._cluster:
                cluster = RedisCluster.from_url(self._redis_url, client_name=name)
                self._conn = honour_cluster_cancellation(cluster)
            else:
                pool = aioredis.ConnectionPool.from_url(self._redis_url, max_connections=1, client_name=name)
                self._conn = aioredis.Redis(connection_pool=honour_cancellation(pool))
        return self._conn

    def _streams(self) -> dict[str, str]:
        """Streams to read now (round-robin, within the budget), each from the oldest position any
        of its ready followers needs."""
        room = self._budget - self._buffered
        limit = room // (self.COUNT * self._entry_size)
        if limit <= 0:
            return {}
        keys = list(self._subs)
        start = self._next % len(keys) if keys else 0
        streams: dict[str, str] = {}
        self._ready_keys = set()
        for key in keys[start:] + keys[:start]:
            ready = [s for s in self._subs[key] if s.queue.qsize() <= self.BACKLOG - self.COUNT]
            if ready:
                self._ready_keys.add(key)
                if len(streams) < limit:
                    streams[key] = min((s.last_id for s in ready), key=_id_order)
        self._covering = len(streams) == len(self._ready_keys)
        self._next = start + len(streams)
        return streams

    async def _run(self) -> None:
        down_since: float | None = None
        delay = 0.05
        while self._subs:
            self._changed.clear()
            streams = self._streams()
            if not streams:
                await self._changed.wait()
                continue
            conn = self._connection()
            items: list[tuple[Any, Any]]
            try:
                if isinstance(conn, RedisCluster):
                    items, blocked = await self._read_cluster(conn, streams)
                else:
                    items, blocked = await self._read_one_server(conn, streams)
            except _RETRIED as exc:
                if not unreachable(exc):
                    self._fail(ClientError(f"reading job streams failed: {exc}"))
                    return
                self._conn_id = None
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > self._reconnect_timeout_s:
                    self._fail(ConnectionLost(f"Redis unreachable for {now - down_since:.0f}s: {exc}"))
                    return
                await asyncio.sleep(delay)  # backoff before reconnecting
                delay = min(delay * 2, 2.0)
                continue
            except RedisError as exc:
                self._fail(ClientError(f"reading job streams failed: {exc}"))
                return
            down_since, delay = None, 0.05
            self._dispatch(items)
            if not blocked:
                await self._pause_if_quiet(streams, items)

    async def _read_one_server(
        self, conn: aioredis.Redis, streams: dict[str, str]
    ) -> tuple[list[tuple[Any, Any]], bool]:
        """One round on one server: one XREAD, with BLOCK when it covers every ready stream.
        Returns the ``(stream, entries)`` read and whether the round blocked."""
        self._reading = streams
        if not self._covering:
            return _items(await conn.xread(streams, count=self.COUNT)), False  # type: ignore[arg-type]
        if self._conn_id is None:
            self._conn_id = int(await conn.client_id())
        self._blocked = True
        try:
            reply = await conn.xread(streams, count=self.COUNT, block=self._block_ms)  # type: ignore[arg-type]
        finally:
            self._blocked = False
        return _items(reply), True

    async def _read_cluster(
        self, conn: RedisCluster, streams: dict[str, str]
    ) -> tuple[list[tuple[Any, Any]], bool]:
        """One round on a cluster: one XREAD per hash slot (see the class docstring). Each XREAD
        goes to the master the client's slot map names (``target_nodes``), which spares redis-py a
        COMMAND GETKEYS round trip per XREAD to find its keys; redis-py follows a MOVED answer to
        the slot's new master (and updates its map). Returns the ``(stream, entries)`` read and
        whether the round blocked."""
        await conn.initialize()  # no-op once initialised
        by_slot: dict[int, dict[str, str]] = defaultdict(dict)
        for key, position in streams.items():
            by_slot[key_slot(key.encode())][key] = position
        self._reading = streams
        if len(by_slot) == 1 and self._covering:
            node = conn.get_node_from_key(next(iter(streams)))
            block = min(self._block_ms, CLUSTER_BLOCK_MS)
            reply = await conn.execute_command(*_xread_args(streams, self.COUNT, block), target_nodes=node)
            return _items(reply), True
        async with conn.pipeline(transaction=False) as pipe:
            for group in by_slot.values():
                node = conn.get_node_from_key(next(iter(group)))
                pipe.execute_command(*_xread_args(group, self.COUNT, None), target_nodes=node)
            replies = await pipe.execute()
        return [item for reply in replies for item in _items(reply)], False

    async def _pause_if_quiet(self, streams: dict[str, str], items: list[tuple[Any, Any]]) -> None:
        """After a round without BLOCK: go on at once while windows of the cycle are left; at the
        end of a cycle wait until it has lasted :data:`CYCLE_MIN_MS` (entries came) or pause
        (nothing came: :data:`IDLE_MS` doubling up to :data:`IDLE_MAX_MS`); a follower that
        joins, leaves or drains its backlog ends the wait."""
        if not self._cycle:
            self._cycle_start = time.monotonic()
        self._cycle.update(streams)
        self._cycle_busy = self._cycle_busy or any(entries for _, entries in items)
        if not self._ready_keys <= self._cycle:
            return  # windows of this cycle still to read
        if self._cycle_busy:
            self._idle_ms = IDLE_MS
            wait = CYCLE_MIN_MS / 1000 - (time.monotonic() - self._cycle_start)
        else:
            wait = self._idle_ms / 1000
            self._idle_ms = min(self._idle_ms * 2, IDLE_MAX_MS)
        self._cycle, self._cycle_busy = set(), False
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()

    def _dispatch(self, reply: Any) -> None:
        """Hand each entry to the followers it continues.

        A read of stream S from id F returns the entries right after F. A follower whose position
        is before F (it joined while the read was in flight, asking for older entries) would miss
        the entries between its position and F: it gets nothing from this read and is served by
        the next one, which starts from its position.
        """
        items = reply.items() if isinstance(reply, dict) else (reply or [])
        for raw_key, entries in items:
            key = _text(raw_key)
            start = _id_order(self._reading.get(key, "0"))
            takers = [s for s in self._subs.get(key, ()) if _id_order(s.last_id) >= start]
            for raw_id, fields in _entries(entries):
                entry_id = _text(raw_id)
                size = sum(len(k) + len(v) for k, v in fields.items() if isinstance(v, bytes | str))
                self._entry_size = max(self._entry_size, size)
                for sub in takers:
                    if _id_order(entry_id) > _id_order(sub.last_id):
                        sub.last_id = entry_id
                        sub.buffered += size
                        self._buffered += size
                        sub.queue.put_nowait((fields, size))

    def _fail(self, exc: BaseException) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.queue.put_nowait(exc)


def _xread_args(streams: dict[str, str], count: int, block: int | None) -> list[Any]:
    """XREAD's arguments for ``streams`` (key -> exclusive start id)."""
    args: list[Any] = ["XREAD"]
    if block is not None:
        args += ["BLOCK", block]
    return [*args, "COUNT", count, "STREAMS", *streams, *streams.values()]


def _items(reply: Any) -> list[tuple[Any, Any]]:
    """``[(stream, entries)]`` from an XREAD reply (RESP2 list or RESP3 map; None: nothing)."""
    if isinstance(reply, dict):
        return list(reply.items())
    return [(item[0], item[1]) for item in reply or []]


def _entries(entries: Any) -> list[tuple[Any, Any]]:
    """``[(id, fields)]`` from XREAD's per-stream entry list (RESP2 or RESP3 shape)."""
    out = []
    for entry in entries or []:
        raw_id, fields = entry[0], entry[1]
        if fields is None:
            continue
        if isinstance(fields, list):  # RESP2 flat list
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        out.append((raw_id, fields))
    return out


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
