"""Chunk, progress and status entries on a job's reply stream ``<prefix>:job:{<job_id>}``.

Progress and status entries also go to ``<prefix>:job:{<job_id>}:status`` (in the same MULTI, so
both streams show them in the same order), which followers read when they want no chunk bytes.

One :class:`ReplyStream` per attempt. Entries are plain field maps built by ``contracts.events``
(never FastStream's binary envelope), so a requester needs nothing but a Redis client.

Example:
    >>> # reply = ReplyStream(redis, Keys("traces"), "job-1", attempt=2)
    >>> # await reply.chunk(b"...", last=False)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

from contracts.events import ChunkEvent, ProgressEvent, StatusEvent
from contracts.keys import Keys

__all__ = ["ReplyStream", "queue_entry"]


def queue_entry(pipe: Pipeline, keys: Keys, job_id: str, fields: dict[str, str | bytes]) -> None:
    """Queue a status or progress entry on the job stream and on its status stream (same order
    on both). Every status/progress entry of a job goes through here; chunks go to the job stream
    only."""
    mapping: Any = fields
    pipe.xadd(keys.job(job_id), mapping)
    pipe.xadd(keys.status_stream(job_id), mapping)


class ReplyStream:
    """Writes one attempt's entries on the job stream, in order.

    Args:
        redis: client (``decode_responses=False``: chunk data is raw bytes), one server or a cluster.
        keys: key names under the configured prefix.
        job_id: the job.
        attempt: the attempt every entry carries.
        transaction: makes the MULTI/EXEC pipeline for a key's hash slot (required with a cluster
            client, e.g. ``Runtime.transaction``); default: ``redis.pipeline(transaction=True)``.
        hold_last: keep the ``last`` chunk's entry in :attr:`held` instead of writing it: the caller
            writes it in the MULTI of the terminal status (one round trip less per job), or drops
            it with the attempt.
    """

    def __init__(
        self,
        redis: Redis | RedisCluster,
        keys: Keys,
        job_id: str,
        attempt: int,
        *,
        transaction: Callable[[str], AbstractAsyncContextManager[Pipeline]] | None = None,
        hold_last: bool = False,
    ) -> None:
        if transaction is None:
            if isinstance(redis, RedisCluster):
                raise TypeError("a cluster client needs transaction= (a MULTI/EXEC on one hash slot)")
            plain = redis

            def transaction(_key: str) -> AbstractAsyncContextManager[Pipeline]:
                return plain.pipeline(transaction=True)

        self._transaction = transaction
        self._redis = redis
        self._keys = keys
        self.stream = keys.job(job_id)
        self.job_id = job_id
        self.attempt = attempt
        #: Chunks written so far, and their total size (the next chunk's offset).
        self.seq = 0
        self.offset = 0
        #: Entry ids of the chunks written so far (removed when this attempt does not succeed).
        self.chunk_ids: list[bytes | str] = []
        self._hold_last = hold_last
        #: The last chunk's entry, not written (``hold_last``); counted in :attr:`seq` and :attr:`offset`.
        self.held: ChunkEvent | None = None

    async def chunk(self, data: bytes, *, last: bool) -> None:
        """XADD the next chunk; awaited so a slow Redis slows the producer down (bounded memory)."""
        event = ChunkEvent(
            job_id=self.job_id, attempt=self.attempt, seq=self.seq, offset=self.offset, data=data, last=last
        )
        if last and self._hold_last:
            self.held = event
        else:
            self.chunk_ids.append(await self._xadd(event.to_fields()))
        self.seq += 1
        self.offset += len(data)

    async def progress(self, event: ProgressEvent) -> None:
        """XADD a progress entry on the job and status streams (the caller rate-limits)."""
        await self._xadd_both(event.to_fields())

    async def status(self, event: StatusEvent) -> None:
        """XADD a non-terminal status entry (terminal ones go through the service's finish)."""
        await self._xadd_both(event.to_fields())

    async def _xadd_both(self, fields: dict[str, str | bytes]) -> None:
        async with self._transaction(self.stream) as pipe:
            queue_entry(pipe, self._keys, self.job_id, fields)
            await pipe.execute()

    async def _xadd(self, fields: dict[str, str | bytes]) -> bytes | str:
        mapping: Any = fields
        entry_id: bytes | str = await self._redis.xadd(self.stream, mapping)
        return entry_id
