"""Chunk, progress and status entries on a job's reply stream ``<prefix>:job:{<job_id>}``.

Progress and status entries also go to ``<prefix>:job:{<job_id>}:status`` (in the same MULTI, so
both streams show them in the same order), which followers read when they want no chunk bytes.

Each chunk entry is written by a MULTI whose script then appends ``<attempt> <entry id>;`` to the
job's ``chunk_ids`` string (:data:`CHUNK_SCRIPT`), so that the job's end can delete the chunks of
every attempt that did not succeed, whichever worker or delivery wrote them (one killed mid-job
included), without reading the chunks back (:data:`DROP_SCRIPT`). With the attempt's lock value,
the script deletes the chunk in the same MULTI unless that lease is still held: a worker that lost
its lease leaves no chunk.

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

__all__ = ["CHUNK_SCRIPT", "DROP_SCRIPT", "LeaseLost", "ReplyStream", "queue_drop_chunks", "queue_entry"]

#: KEYS: job stream, chunk ids, lock. ARGV: lock value ('': no check), attempt. Runs in the chunk's
#: MULTI right after its XADD: appends ``<attempt> <id>;`` to the chunk ids (about 22 bytes per
#: chunk until the job ends), the id read from ``XINFO STREAM ... FULL COUNT 1`` (the stream's
#: last-generated id, plus its first entry: a job stream starts with a status, never a chunk). The
#: chunk's data never passes through Lua (an XADD from Lua, the data in ARGV, cost Redis 3.4x the
#: plain XADD's CPU per 1 MiB chunk; this MULTI about +6%: bench/bench_chunk_write.py). When the
#: lock does not hold the value the chunk is deleted at once (no reader ever sees it) and the
#: script returns false (a stream the XADD created is deleted too). The MULTI runs whole or not at
#: all (an XADD refused at queueing, e.g. OOM, aborts the EXEC), so the id is the chunk's. The ids
#: follow the job stream's TTL (none while a job runs).
CHUNK_SCRIPT = """
local info = redis.call('XINFO', 'STREAM', KEYS[1], 'FULL', 'COUNT', 1)
local id
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then id = info[i + 1] break end
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
  redis.call('XDEL', KEYS[1], id)
  if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
  return false
end
redis.call('APPEND', KEYS[2], ARGV[2] .. ' ' .. id .. ';')
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

#: KEYS: job stream, chunk ids. ARGV: the attempt whose chunks stay ('': none). XDELs every
#: recorded chunk entry of the other attempts (ids only: no chunk is read), deletes the chunk ids,
#: returns how many entries were deleted.
DROP_SCRIPT = """
local ids = redis.call('GET', KEYS[2])
redis.call('DEL', KEYS[2])
if not ids then return 0 end
local drop, n = {}, 0
for attempt, id in string.gmatch(ids, '(%d+) ([%d%-]+);') do
  if attempt ~= ARGV[1] then
    drop[#drop + 1] = id
    if #drop == 1000 then
      n = n + redis.call('XDEL', KEYS[1], unpack(drop))
      drop = {}
    end
  end
end
if #drop > 0 then n = n + redis.call('XDEL', KEYS[1], unpack(drop)) end
return n
"""


class LeaseLost(Exception):
    """A chunk was not kept: the attempt's lease is no longer held (the job is someone else's)."""


def queue_drop_chunks(pipe: Pipeline, keys: Keys, job_id: str, keep_attempt: int | None) -> None:
    """Queue the deletion of the job's recorded chunk entries except those of ``keep_attempt``
    (None: all of them), and of the record itself: part of a job's end (:data:`DROP_SCRIPT`)."""
    keep = "" if keep_attempt is None else str(keep_attempt)
    pipe.eval(DROP_SCRIPT, 2, keys.job(job_id), keys.chunk_ids(job_id), keep)


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
        lock_value: the lock value the attempt holds (``Lease.value``): a chunk stays only while
            the job's lock holds it (else it is deleted in its MULTI: :class:`LeaseLost`); None: no
            check.
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
        lock_value: str | None = None,
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
        self._lock_value = lock_value
        #: Chunks written so far, and their total size (the next chunk's offset).
        self.seq = 0
        self.offset = 0
        #: Entry ids of the chunks written so far (also recorded in Redis: :data:`CHUNK_SCRIPT`).
        self.chunk_ids: list[bytes | str] = []
        self._hold_last = hold_last
        #: The last chunk's entry, not written (``hold_last``); counted in :attr:`seq` and :attr:`offset`.
        self.held: ChunkEvent | None = None

    async def chunk(self, data: bytes, *, last: bool) -> None:
        """XADD the next chunk (recording its id for the job's end); awaited so a slow Redis slows
        the producer down (bounded memory).

        Raises:
            LeaseLost: the lock no longer holds ``lock_value``; the chunk was not kept.
        """
        event = ChunkEvent(
            job_id=self.job_id, attempt=self.attempt, seq=self.seq, offset=self.offset, data=data, last=last
        )
        if last and self._hold_last:
            self.held = event
        else:
            self.chunk_ids.append(await self._xadd_chunk(event.to_fields()))
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

    async def _xadd_chunk(self, fields: dict[str, str | bytes]) -> bytes | str:
        mapping: Any = fields
        keys = self._keys
        ids, lock = keys.chunk_ids(self.job_id), keys.lock(self.job_id)
        async with self._transaction(self.stream) as pipe:
            pipe.xadd(self.stream, mapping)
            pipe.eval(CHUNK_SCRIPT, 3, self.stream, ids, lock, self._lock_value or "", str(self.attempt))
            entry_id, recorded = await pipe.execute()
        if recorded is None:
            raise LeaseLost(f"job {self.job_id}: attempt {self.attempt} no longer holds the lease")
        result: bytes | str = entry_id
        return result
