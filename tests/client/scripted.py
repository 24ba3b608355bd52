"""A tiny scripted "worker" writing wire-contract entries with the raw Redis client.

Only for narrow client unit tests: it lets a test put exactly the entries it wants on a job stream
(restarted attempts, zombie chunks, corrupt sizes). The client is also tested against the real
worker (tests/client/test_against_worker.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis.asyncio as aioredis

from contracts import ChunkEvent, JobState, Keys, ProgressEvent, StatusEvent

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


class ScriptedWorker:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def _add(self, job_id: str, event: Any, *, terminal_or_status: bool = False) -> None:
        fields: Any = event.to_fields()
        await self.redis.xadd(self.keys.job(job_id), fields)
        if not isinstance(event, ChunkEvent):  # status and progress: also on the status stream
            await self.redis.xadd(self.keys.status_stream(job_id), fields)
        if terminal_or_status:
            await self.redis.delete(self.keys.state(job_id))
            await self.redis.hset(self.keys.state(job_id), mapping=fields)
            await self.redis.xadd(self.keys.events, fields)

    async def status(self, job_id: str, state: JobState, attempt: int = 1, **extra: Any) -> StatusEvent:
        event = StatusEvent(job_id=job_id, state=state, attempt=attempt, **extra)
        await self._add(job_id, event, terminal_or_status=True)
        return event

    async def progress(self, job_id: str, attempt: int = 1, percent: float = 50.0) -> None:
        event = ProgressEvent(job_id=job_id, attempt=attempt, phase="threads", spans=10, percent=percent)
        await self._add(job_id, event)

    async def chunks(
        self, job_id: str, data: bytes, attempt: int = 1, size: int = 1000, *, last: bool = True
    ) -> None:
        pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        offset = 0
        for seq, piece in enumerate(pieces):
            is_last = last and seq == len(pieces) - 1
            event = ChunkEvent(
                job_id=job_id, attempt=attempt, seq=seq, offset=offset, data=piece, last=is_last
            )
            await self._add(job_id, event)
            offset += len(piece)

    async def succeed(self, job_id: str, data: bytes, attempt: int = 1, **extra: Any) -> StatusEvent:
        return await self.status(
            job_id,
            JobState.SUCCEEDED,
            attempt,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            **extra,
        )

    async def whole_job(self, job_id: str, data: bytes, chunk_size: int = 1000) -> None:
        await self.status(job_id, JobState.QUEUED, 0)
        await self.status(job_id, JobState.RUNNING, 1)
        await self.progress(job_id, 1, 50.0)
        await self.chunks(job_id, data, 1, chunk_size)
        await self.succeed(job_id, data, 1, uri=f"file:///nowhere/{job_id}.pftrace")
