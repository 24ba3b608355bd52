"""Where a job's latest run starts on its streams, and what the job looks like now. Part of
:mod:`contracts.client`; imports redis, pydantic and the stdlib only.

A job id may run several times (a failed, cancelled or dead job is resubmitted as a new run whose
attempt numbers continue). Entry ids of every stream come from the one Redis server clock, so a
position found on the small status stream (``<prefix>:job:{id}:status``) also bounds the job
stream: a follower starts at the millisecond of the previous run's terminal status and drops the
few entries of that millisecond that still belong to the previous run by their attempt number.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts.client_errors import ClientError, ConnectionLost
from contracts.events import StatusEvent, parse_entry
from contracts.keys import Keys
from contracts.request import TraceRequest
from contracts.states import TERMINAL_STATES, JobState

__all__ = [
    "UNREACHABLE",
    "RedisLike",
    "Run",
    "Snapshot",
    "id_order",
    "job_requests",
    "redis_errors",
    "request_job_id",
    "run_start",
    "snapshot",
    "unreachable",
]

#: The client's Redis: one server, or a Redis Cluster (``TraceClient(..., cluster=True)``).
RedisLike: TypeAlias = aioredis.Redis | RedisCluster
#: Errors that mean Redis (or, on a cluster, the master of a slot) cannot be reached now; a later
#: try may succeed (a cluster whose master is down answers CLUSTERDOWN, TRYAGAIN while a slot
#: moves, and has no node for the slot until its map is read again).
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    AskError,
    SlotNotCoveredError,
)

#: States after which a resubmitted request starts a new run on the same job stream.
RERUN_STATES = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.DEAD})
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
_PAGE = 200
#: Most request entries looked at when searching the request stream for a job's pending request.
MAX_REQUEST_SCAN = 20_000
_MAX_SEQ = 2**64 - 1


#: How redis-py's cluster client says that no node answers, or that its slot map has holes.
_CLUSTER_UNREACHABLE = ("Redis Cluster cannot be connected", "All slots are not covered")
#: redis-py's cluster client reached the node, and it answered that it is a plain server: a
#: configuration error, not a lost connection (redis/asyncio/cluster.py).
_NOT_A_CLUSTER = "Cluster mode is not enabled on this node"


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot be reached now (:data:`UNREACHABLE`, or a cluster client
    that reaches no node)."""
    if isinstance(exc, UNREACHABLE):
        return True
    text = str(exc)
    return (
        isinstance(exc, RedisClusterException)
        and text.startswith(_CLUSTER_UNREACHABLE)
        and _NOT_A_CLUSTER not in text
    )


@contextlib.asynccontextmanager
async def redis_errors(what: str) -> AsyncIterator[None]:
    """Turn redis-py and socket errors into the client's error family."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        if unreachable(exc):
            raise ConnectionLost(f"{what}: cannot reach Redis: {exc}") from exc
        if _NOT_A_CLUSTER in str(exc):
            raise ClientError(
                f"{what}: not a Redis Cluster node (cluster mode is off there; connect without cluster)"
            ) from exc
        raise ClientError(f"{what}: {exc}") from exc


@dataclass(frozen=True)
class Run:
    """Where a follower of one run starts.

    Attributes:
        position: exclusive XREAD start, valid on the job stream and on the status stream.
        min_attempt: entries with a lower attempt belong to an earlier run and are dropped.
        answer_from: for ``events()`` of a request to an already succeeded job: the status-stream
            position of the answer to that request (the duplicate-request status), instead of
            the old run's history.
    """

    position: str = "0"
    min_attempt: int = 0
    answer_from: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """What Redis says about a job now (one pipeline)."""

    state: dict[str, str]
    #: Entry id of the newest request for the job still on the request stream (not answered yet).
    submitted: str | None
    #: Id of the newest status-stream entry.
    newest_status: str | None
    job_stream_exists: bool
    #: Whether the newest status-stream entry is an answer to a cancel (a cancel of a job that does not
    #: exist is answered ``not_found`` on that job's streams; it does not make the job known).
    newest_is_cancel: bool = False

    @property
    def attempt(self) -> int:
        return int(self.state.get("attempt", 0) or 0)

    @property
    def current(self) -> JobState | None:
        raw = self.state.get("state", "")
        return JobState(raw) if raw in JobState._value2member_map_ else None

    @property
    def rerun_pending(self) -> bool:
        """A request was sent after the job ended failed/cancelled/dead and no worker answered it yet."""
        if self.current not in RERUN_STATES or self.submitted is None:
            return False
        return self.newest_status is None or id_order(self.submitted) > id_order(self.newest_status)

    @property
    def known(self) -> bool:
        if self.state or self.submitted is not None:
            return True
        return not self.newest_is_cancel and (self.newest_status is not None or self.job_stream_exists)

    def status(self, job_id: str) -> StatusEvent | None:
        """The job's latest status; ``queued`` while a request waits for a worker; None if unknown."""
        if self.submitted is not None and (not self.state or self.rerun_pending):
            return StatusEvent(
                job_id=job_id,
                attempt=self.attempt,
                state=JobState.QUEUED,
                time=id_time(self.submitted),
                detail="submitted; waiting for a worker",
            )
        if not self.state:
            return None
        known = {
            k: v for k, v in self.state.items() if k in StatusEvent.model_fields
        }  # not state-only fields
        with contextlib.suppress(ValueError):
            event = parse_entry(known)
            if isinstance(event, StatusEvent):
                return event
        return None


async def snapshot(redis: RedisLike, keys: Keys, job_id: str, *, pending: bool = True) -> Snapshot:
    """The job's state hash and newest status entry; with ``pending``, also its newest request
    still on the request stream when that matters (no state yet, or an ended job)."""
    async with redis_errors(f"reading job {job_id}"), redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.state(job_id))
        pipe.xrevrange(keys.status_stream(job_id), count=1)
        pipe.exists(keys.job(job_id))
        raw_state, newest, exists = await pipe.execute()
    state = {_text(k): _text(v) for k, v in (raw_state or {}).items()}
    submitted = None
    if pending and (not state or state.get("state") in {s.value for s in RERUN_STATES}):
        submitted = await pending_request(redis, keys, job_id)
    return Snapshot(
        state=state,
        submitted=submitted,
        newest_status=_text(newest[0][0]) if newest else None,
        job_stream_exists=bool(exists),
        newest_is_cancel=bool(newest) and _is_cancel_answer(newest[0][1]),
    )


def _is_cancel_answer(fields: Any) -> bool:
    return any(_text(k) == "type" and _text(v) == "cancel" for k, v in (fields or {}).items())


async def pending_request(redis: RedisLike, keys: Keys, job_id: str) -> str | None:
    """Entry id of the newest request for ``job_id`` still on the request stream (workers delete
    a request entry once they have answered it), looking at most at :data:`MAX_REQUEST_SCAN`."""
    async with (
        redis_errors("reading the request stream"),
        contextlib.aclosing(job_requests(redis, keys, job_id)) as found,
    ):
        async for entry_id in found:
            return entry_id
    return None


async def job_requests(redis: RedisLike, keys: Keys, job_id: str) -> AsyncGenerator[str, None]:
    """Entry ids of the requests for ``job_id`` on the request stream, newest first, among its
    newest :data:`MAX_REQUEST_SCAN` entries (pages of 200 XREVRANGE). Redis errors pass through
    unchanged (redis-py's own)."""
    last, seen = "+", 0
    while seen < MAX_REQUEST_SCAN:
        page: Any = await redis.xrevrange(keys.requests, max=last, min="-", count=_PAGE)
        for raw_id, fields in page:
            raw = (fields or {}).get(b"request", (fields or {}).get("request"))
            if raw is not None and request_job_id(raw) == job_id:
                yield _text(raw_id)
        seen += len(page)
        if len(page) < _PAGE:
            return
        last = "(" + _text(page[-1][0])


def request_job_id(raw: str | bytes) -> str | None:
    """The job id of a request entry's ``request`` JSON: its ``job_id``, or the id derived from
    it (:meth:`TraceRequest.effective_job_id`); None when it is not a valid request."""
    try:
        fields = json.loads(raw)
        explicit = fields.get("job_id") if isinstance(fields, dict) else None
        if isinstance(explicit, str):
            return explicit
        return TraceRequest.from_json(raw).effective_job_id()
    except ValueError:
        return None


async def run_start(redis: RedisLike, keys: Keys, job_id: str, snap: Snapshot, *, rerun: bool) -> Run:
    """Where the run to follow starts.

    Args:
        rerun: the caller is about to send a request that starts a new run (or one is pending):
            follow only entries after everything there is now.
    """
    if rerun:
        position = before(snap.newest_status) if snap.newest_status else "0"
        return Run(position=position, min_attempt=snap.attempt + 1)
    # The current run starts after the newest terminal status of an earlier attempt.
    current = snap.attempt
    if current <= 0:
        return Run()
    last = "+"
    async with redis_errors(f"reading job {job_id}"):
        while True:
            page: Any = await redis.xrevrange(keys.status_stream(job_id), max=last, min="-", count=_PAGE)
            for raw_id, fields in page:
                f = {_text(k): _text(v) for k, v in (fields or {}).items()}
                if f.get("type") != "status" or f.get("state") not in _TERMINAL:
                    continue
                attempt = int(f.get("attempt", 0) or 0)
                if 0 < attempt < current:  # attempt 0: an answer to a request that started no attempt
                    return Run(position=before(_text(raw_id)), min_attempt=attempt + 1)
            if len(page) < _PAGE:
                return Run()
            last = "(" + _text(page[-1][0])


def before(entry_id: str) -> str:
    """An exclusive XREAD start that takes every entry from ``entry_id``'s millisecond on."""
    ms = id_order(entry_id)[0]
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0"


def id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def id_time(entry_id: str) -> datetime:
    """When Redis created an entry (its id's milliseconds), UTC."""
    return datetime.fromtimestamp(id_order(entry_id)[0] / 1000, UTC)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
