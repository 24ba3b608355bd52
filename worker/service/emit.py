"""Writes an attempt's chunks to the blob writer and the reply stream, overlapped with generation.

A small queue (``depth`` chunks) sits between the generator and the writes: while chunk k goes to
the blob and to Redis, the generator already works on chunk k+1. When the writes are slower (slow
Redis, slow S3) the queue fills and :meth:`Emitter.put` waits: memory stays bounded at ``depth``
chunks. Chunks keep their order; the blob write and the XADD of one chunk run concurrently.
"""

from __future__ import annotations

import asyncio

from worker.service.ports import BlobWriterLike
from worker.sinks.reply_stream import ReplyStream

__all__ = ["ABORT_WAIT_S", "Emitter"]

#: Longest wait in :meth:`Emitter.abort` for a chunk write in flight (above the Redis client's 30 s
#: socket timeout, so an XADD that Redis answers is always waited for).
ABORT_WAIT_S = 45.0


class Emitter:
    """Ordered, bounded, overlapped chunk writes for one attempt.

    Args:
        writer: the attempt's blob writer.
        reply: the attempt's reply stream.
        chunks: whether chunk entries are published (the request's ``chunks``).
        depth: chunks queued at most.
    """

    def __init__(self, writer: BlobWriterLike, reply: ReplyStream, *, chunks: bool, depth: int = 4) -> None:
        self._writer = writer
        self._reply = reply
        self._chunks = chunks
        self._queue: asyncio.Queue[tuple[bytes, bool] | None] = asyncio.Queue(maxsize=depth)
        self._aborted = False
        self._writing = False
        self._task = asyncio.create_task(self._drain())
        #: Chunks written (entries published, or counted when chunks are off).
        self.count = 0

    async def put(self, data: bytes, *, last: bool) -> None:
        """Queue a chunk; waits while the queue is full; raises the write error if a write failed."""
        await self._put((data, last))

    async def close(self) -> None:
        """Wait until every queued chunk is written; raises the write error if one failed."""
        await self._put(None)
        await self._task

    async def abort(self) -> None:
        """Stop writing: queued chunks are dropped, but a chunk being written is let finish (at most
        ``ABORT_WAIT_S``), so that the reply stream's ``chunk_ids`` hold every entry Redis wrote
        (the job's end deletes them through the ids the chunk's MULTI recorded in Redis, whether
        or not its reply came back). Raises nothing from the writes."""
        self._aborted = True
        if not self._task.done() and not self._writing:
            self._task.cancel()  # waiting for the next chunk: nothing in flight
        try:
            if not self._task.done():
                await asyncio.wait({self._task}, timeout=ABORT_WAIT_S)
        finally:
            # Past the wait (or this task cancelled: shutdown) the write is cancelled after all.
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _put(self, item: tuple[bytes, bool] | None) -> None:
        if self._task.done():
            self._task.result()  # a write failed: raise it here, in the producer
            raise RuntimeError("chunk writer stopped")
        put = asyncio.ensure_future(self._queue.put(item))
        done, _ = await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            await asyncio.gather(put, return_exceptions=True)
            self._task.result()
            raise RuntimeError("chunk writer stopped")

    async def _drain(self) -> None:
        while not self._aborted and (item := await self._queue.get()) is not None and not self._aborted:
            data, last = item
            self._writing = True
            try:
                await self._write(data, last)
            finally:
                self._writing = False

    async def _write(self, data: bytes, last: bool) -> None:
        jobs = []
        if data:
            jobs.append(self._writer.write(data))
        if self._chunks:
            jobs.append(self._reply.chunk(data, last=last))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if not self._chunks:
            self._reply.seq += 1
            self._reply.offset += len(data)
        self.count += 1
