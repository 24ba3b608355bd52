"""Redis connections that never lose a cancellation (used by the client library and the worker).
Imports redis and the stdlib only.

On Python 3.11, ``asyncio.wait_for`` drops a cancellation of its caller that arrives in the loop
iteration where the awaited operation completes: it returns the result as if nothing happened
(https://github.com/python/cpython/issues/86296, fixed in 3.12 where ``wait_for`` is built on
``asyncio.timeout``). redis-py sends every command through ``wait_for`` when the connection has a
``socket_timeout`` (redis-py 8's default is 5 s), so a task cancelled in the two or three loop
iterations a command takes to send went on as if never cancelled: a download cancelled just as it
read the job's state ran to the end of the trace.

:func:`honour_cancellation` makes a pool's connections re-raise such a cancellation once the send
returns; the command's reply is then never read, so that connection is dropped (the pool opens a
new one), as redis-py does itself for a cancellation that interrupts a read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool

__all__ = ["honour_cancellation", "honour_cluster_cancellation"]

P = TypeVar("P", bound=ConnectionPool)
C = TypeVar("C", bound=RedisCluster)


class _CancelGuard(AbstractConnection):
    """Mixed in before a concrete connection class by :func:`honour_cancellation`."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0
        await super().send_packed_command(command, check_health)
        if task is not None and task.cancelling() > before:
            await self._cancelled()

    async def _cancelled(self) -> None:
        """The task was cancelled during the send and the send returned anyway: stop here."""
        try:
            # A cancellation requested while this task was running (not waiting) is delivered at
            # its next suspension: let it arrive here rather than raise it a second time later.
            await asyncio.sleep(0)
        finally:
            await self.disconnect(nowait=True)  # the reply of what was sent is never read
        raise asyncio.CancelledError  # the cancellation the send swallowed


_GUARDED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _guarded(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    if issubclass(cls, _CancelGuard):
        return cls
    if cls not in _GUARDED:
        _GUARDED[cls] = type(cls.__name__, (_CancelGuard, cls), {"__module__": __name__})
    return _GUARDED[cls]


def honour_cancellation(pool: P) -> P:
    """Make ``pool``'s connections (plain, TLS or unix socket: whatever its URL chose) re-raise a
    cancellation that redis-py's send swallowed; returns ``pool``. Call before the pool's first
    connection is made."""
    cls: Any = pool.connection_class
    pool.connection_class = _guarded(cls)
    return pool


def honour_cluster_cancellation(cluster: C) -> C:
    """:func:`honour_cancellation` for a Redis Cluster client: the connections of every node it
    knows now or discovers later (and of :class:`worker.service.redis_io.SlotClients`' per-master
    pools, made from a node's connection class) re-raise a swallowed cancellation; returns
    ``cluster``. Call before its first command.

    redis-py builds each node from the cluster's shared connection keyword arguments (the dict
    its ``NodesManager`` holds too), so replacing ``connection_class`` there covers nodes found at
    discovery and on MOVED; the startup nodes already built are changed in place.
    """
    kwargs: dict[str, Any] = cluster.connection_kwargs
    kwargs["connection_class"] = _guarded(kwargs.get("connection_class", Connection))
    for node in (*cluster.startup_nodes, *cluster.nodes_manager.startup_nodes.values()):
        guarded: Any = _guarded(node.connection_class)
        node.connection_class = guarded
    return cluster
