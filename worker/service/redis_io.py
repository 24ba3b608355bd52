"""Redis plumbing shared by the service: transient-error detection, a retry loop, and writes that
span a job's hash slot and the shared streams, on one Redis or a Redis Cluster.

A Redis restart or a network blip shows up as ``ConnectionError``/``TimeoutError`` (``LOADING``
after a restart with persistence is a ``BusyLoadingError``, a ``ConnectionError``); on a cluster, a
master that is down or a slot on the move shows up as ``CLUSTERDOWN``, ``TRYAGAIN``, ``MOVED``/``ASK``
or an uncovered slot. Writes that must not be lost (terminal status, acknowledgements) go through
:func:`retry_redis`.

Hash slots (docs/PROTOCOL.md §10): every key of one job carries the hash tag ``{<job_id>}``, so its
keys share one slot and a MULTI/EXEC or a Lua script over them is legal on a cluster. The shared
streams (``<prefix>:requests``, ``:cancels``, ``:events``, ``:dead``) are single keys, each in its
own slot: no command touches two of them, nor one of them and a job key. A write that touches
both kinds (a terminal status and the acknowledgement of its request) is a :class:`Write`: one
MULTI on one Redis; on a cluster, the job's MULTI first, then the shared streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

__all__ = [
    "TRANSIENT",
    "HiredisPacking",
    "Op",
    "RedisLike",
    "SlotClients",
    "Write",
    "hiredis_packing",
    "is_transient",
    "retry_redis",
    "write",
    "write_shared",
]

log = logging.getLogger("worker.service")

#: The service's Redis client: one server, or a cluster (``TRACE_WORKER_REDIS_CLUSTER``).
RedisLike: TypeAlias = Redis | RedisCluster
#: A command queued on a pipeline (``lambda pipe: pipe.xadd(...)``).
Op: TypeAlias = Callable[[Any], object]

#: Exceptions after which the same command may succeed later (on a cluster: once the master is
#: back, or the client has the new slot map). redis-py's cluster client raises its base
#: ``RedisClusterException`` when no node answers at all ("Redis Cluster cannot be connected") or
#: the slot map has holes, so that base counts too: a cluster-wide outage must leave requests
#: pending, never dead-letter them (its other uses are programming errors, such as a cross-slot
#: command, which then show as retries in the log until the caller gives up).
TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.AskError,  # MovedError is one
    redis_errors.RedisClusterException,  # SlotNotCoveredError is one
    ConnectionError,
    TimeoutError,
)
#: Errors after which the cluster's slot map is read again before the next transaction.
_TOPOLOGY = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.AskError,
    redis_errors.SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
)

T = TypeVar("T")


_BUFFERS = (bytes, bytearray, memoryview)


class HiredisPacking(AbstractConnection):
    """Packs commands with hiredis's C packer, as redis-py's synchronous client does; its asyncio
    connection packs in Python: about 30 µs for a status entry's EVAL or XADD (measured against
    3 µs), and a small job sends about a dozen of those. A command carrying a value longer than
    the buffer cutoff (a trace chunk) keeps redis-py's packer, which sends such a value without
    copying it; so does a command hiredis refuses (it takes exact types only: an int subclass, or
    None, whose DataError is then redis-py's). Same bytes on the wire (tests/service/test_redis_io.py)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        original = args
        cutoff = self._buffer_cutoff
        copy = False
        for arg in args:
            if isinstance(arg, _BUFFERS):
                if len(arg) > cutoff:
                    return super().pack_command(*args)
                copy = copy or not isinstance(arg, bytes)
        head = args[0]
        # A command name with literal arguments ("CONFIG GET") is split, as redis-py does.
        if isinstance(head, str):
            args = (*head.encode().split(), *args[1:])
        elif b" " in head:
            args = (*head.split(), *args[1:])
        if copy:  # hiredis takes bytes, not other buffers
            args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        packed: Any = args
        try:
            return [hiredis.pack_command(packed)]
        except TypeError:
            # hiredis takes exact types only: an int subclass (an IntEnum) is refused where redis-py
            # packs it, and None or a bool is refused with another message. redis-py's packer then
            # decides, as it would have: the same bytes, or its DataError.
            return super().pack_command(*original)


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def hiredis_packing(pool: ConnectionPool) -> ConnectionPool:
    """Make ``pool``'s connections pack with :class:`HiredisPacking` (keeping the class's other
    behaviour, e.g. :func:`contracts.redis_cancel.honour_cancellation`); returns ``pool``. Call
    before the pool's first connection is made."""
    cls: Any = pool.connection_class
    if not issubclass(cls, HiredisPacking):
        if cls not in _PACKING:
            _PACKING[cls] = type(cls.__name__, (HiredisPacking, cls), {"__module__": __name__})
        pool.connection_class = _PACKING[cls]
    return pool


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


async def retry_redis(
    op: Callable[[], Awaitable[T]], *, what: str, give_up_after_s: float = 120.0, first_delay_s: float = 0.05
) -> T:
    """Run ``op`` until it does not fail with a transient Redis error (exponential backoff, capped at 2 s).

    Raises:
        The last transient error once ``give_up_after_s`` has passed.
    """
    deadline = time.monotonic() + give_up_after_s
    delay = first_delay_s
    while True:
        try:
            return await op()
        except TRANSIENT as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("redis unavailable during %s (%s); retrying in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class SlotClients:
    """Transactions on one hash slot of a Redis Cluster: a plain client per master, found through
    the cluster client's slot map.

    redis-py's ``RedisCluster`` can run MULTI/EXEC on one slot, but its asyncio transaction
    pipeline looks up each queued command's slot on a new thread with a new event loop
    (``TransactionStrategy.execute_command``), which blocks this loop: measured 8.6 ms for a
    6-command MULTI against 0.25 ms for the same pipeline without MULTI (three local masters). So
    a transaction goes to the slot's master over a plain ``redis.asyncio.Redis`` pool made from
    the cluster client's own connection settings (address, password, TLS, timeouts).

    Args:
        cluster: the service's cluster client (its slot map is refreshed after a failed transaction).
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._clients: dict[str, Redis] = {}
        self._stale = False

    async def client_for(self, key: str) -> Redis:
        """The plain client of the master serving ``key``'s slot now."""
        await self._cluster.initialize()  # no-op once initialised
        if self._stale:
            self._stale = False
            await self._cluster.nodes_manager.initialize()
        node = self._cluster.get_node_from_key(key)
        if node is None:  # pragma: no cover - redis-py raises SlotNotCoveredError first
            raise redis_errors.SlotNotCoveredError(f"no master serves the slot of {key!r}")
        client = self._clients.get(node.name)
        if client is None:
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            client = self._clients[node.name] = Redis(connection_pool=pool)
        return client

    @contextlib.asynccontextmanager
    async def pipeline(self, key: str) -> AsyncIterator[Pipeline]:
        """A MULTI/EXEC pipeline (WATCH allowed) on the master of ``key``'s slot; every key it
        touches must share that slot (else Redis answers CROSSSLOT)."""
        client = await self.client_for(key)
        try:
            async with client.pipeline(transaction=True) as pipe:
                yield pipe
        except _TOPOLOGY:
            self._stale = True  # a master moved, died or came back: read the slot map again
            raise

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()
                await client.connection_pool.disconnect()


class Write:
    """One logical write: commands on a job's keys (:attr:`pipe`, a MULTI/EXEC on the job's hash
    slot; WATCH allowed before ``pipe.multi()``) and commands on the shared streams: records
    (events, dead letters) and acknowledgements (XACK/XDEL of the request or cancel entry).

    On one Redis every command is queued on :attr:`pipe`: one MULTI, all or nothing. On a Redis
    Cluster a transaction cannot span slots, so :func:`write` runs the job's MULTI, then the
    records, then the acknowledgements, each step retried through blips on its own. A worker
    dying between two steps leaves its entry pending: it is delivered again (the job's state says
    what already happened), and an events entry may be missing or doubled; a request is never
    acknowledged before its answer is written.
    """

    def __init__(self, pipe: Pipeline, *, split: bool) -> None:
        self.pipe = pipe
        self._split = split
        self.records: list[Op] = []
        self.acks: list[Op] = []
        self.executed = False

    def record(self, op: Op) -> None:
        """Queue a command on the events or dead-letter stream."""
        if self._split:
            self.records.append(op)
        else:
            op(self.pipe)

    def acknowledge(self, op: Op) -> None:
        """Queue an XACK/XDEL of the request or cancel entry (runs last)."""
        if self._split:
            self.acks.append(op)
        else:
            op(self.pipe)

    async def execute(self) -> list[Any]:
        """EXEC the job's MULTI (with, on one Redis, everything else)."""
        result: list[Any] = await self.pipe.execute()
        self.executed = True
        return result


async def write(
    redis: RedisLike,
    slots: SlotClients | None,
    key: str,
    build: Callable[[Write], Awaitable[T]],
    *,
    what: str,
    give_up_after_s: float = 120.0,
) -> T:
    """Run ``build`` on a fresh :class:`Write` on ``key``'s slot until no transient error stops it;
    ``build`` queues commands and calls :meth:`Write.execute` (or returns without writing). On a
    cluster (``slots`` given), the records and then the acknowledgements follow, each retried.

    Exceptions other than transient ones (e.g. a WATCH conflict turned into a retry signal)
    propagate from ``build`` with nothing written.
    """
    done: list[Write] = []

    async def attempt() -> T:
        if slots is None:
            assert isinstance(redis, Redis), "a cluster client needs its SlotClients"
            context: contextlib.AbstractAsyncContextManager[Pipeline] = redis.pipeline(transaction=True)
        else:
            context = slots.pipeline(key)
        async with context as pipe:
            w = Write(pipe, split=slots is not None)
            result = await build(w)
            done[:] = [w]
            return result

    result = await retry_redis(attempt, what=what, give_up_after_s=give_up_after_s)
    w = done[0] if done else None
    if w is not None and w.executed:
        await _shared_steps(redis, (w.records, w.acks), what=what, give_up_after_s=give_up_after_s)
    return result


async def write_shared(
    redis: RedisLike,
    *,
    records: Sequence[Op],
    acks: Sequence[Op],
    what: str,
    give_up_after_s: float = 120.0,
) -> None:
    """Records then acknowledgements with no job key: one MULTI on one Redis; on a cluster, the
    records and then the acknowledgements, each retried."""
    if isinstance(redis, RedisCluster):
        await _shared_steps(redis, (records, acks), what=what, give_up_after_s=give_up_after_s)
        return

    async def one() -> None:
        async with redis.pipeline(transaction=True) as pipe:
            for op in (*records, *acks):
                op(pipe)
            await pipe.execute()

    await retry_redis(one, what=what, give_up_after_s=give_up_after_s)


async def _shared_steps(
    redis: RedisLike, steps: Sequence[Sequence[Op]], *, what: str, give_up_after_s: float
) -> None:
    """Each step's commands in one pipeline without MULTI (redis-py groups them per master), the
    steps in order."""
    for ops in steps:
        if not ops:
            continue

        async def step(ops: Sequence[Op] = ops) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for op in ops:
                    op(pipe)
                await pipe.execute()

        await retry_redis(step, what=f"{what} (shared streams)", give_up_after_s=give_up_after_s)
