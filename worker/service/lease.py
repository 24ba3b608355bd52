"""A job's lease: the lock key ``<prefix>:job:{<id>}:lock`` holding ``<consumer>/<entry id>/<attempt>``.

Only the holder of the lock runs the job. :meth:`Lease.renew` (the heartbeat) extends it with a
compare-and-renew script and XCLAIMs the request entry JUSTID, which resets the entry's idle time
so that no reclaimer takes it, without counting a delivery. A renewal that finds another value
means the job was taken over: the attempt must stop at once and write nothing terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from worker.service.runtime import Runtime

__all__ = ["HELD_PREFIX", "STOP_FIELD", "Claim", "Lease"]

#: Field of the requesters hash that asks the running worker to stop the job (no request wants it).
STOP_FIELD = ":stop"

#: Prefix of a member of the cancelled set that a cancel without request_id added: the request is
#: answered ``cancelled`` at pickup, and the last such request picked up ends the job ``cancelled``.
HELD_PREFIX = "job/"

# KEYS: lock, state, requesters, detached, cancelled, job stream, status stream[, events].
# ARGV: "<consumer>/<entry>", lease ms, entry id, labels JSON, fingerprint, max age ms (-1: any),
# index of the attempt's value among the running status's fields, events MAXLEN, then the running
# status's field/value pairs. On ``go`` the script also starts the
# attempt as ``mark_running`` does (``status running`` on the job and status streams carrying the
# new attempt number, the state hash replaced by it, the job's keys kept alive, and the events copy
# when the events key is given), and returns the running entry's job-stream id.
_BEGIN = (
    f"local HELD = '{HELD_PREFIX}'"
    + """
local entry = ARGV[3]
if redis.call('SREM', KEYS[5], entry) == 1 then return {'cancelled', ''} end
if redis.call('SREM', KEYS[5], HELD .. entry) == 1 then
  for _, held in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    if string.sub(held, 1, #HELD) == HELD then return {'cancelled', ''} end
  end
  return {'cancelled', 'job'}
end
local cur = redis.call('GET', KEYS[1])
local fp = redis.call('HGET', KEYS[2], 'fingerprint')
local st = redis.call('HGET', KEYS[2], 'state')
local function attach()
  if redis.call('SISMEMBER', KEYS[4], entry) == 0 then redis.call('HSET', KEYS[3], entry, ARGV[4]) end
end
if cur then
  if string.find(cur, '/' .. entry .. '/', 1, true) then return {'locked', cur} end
  if fp and fp ~= ARGV[5] then return {'conflict', 'running'} end
  attach()
  return {'locked', cur}
end
if fp and fp ~= ARGV[5] and (st == 'succeeded' or st == 'running') then return {'conflict', st} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if st == 'succeeded' then
  local started = tonumber(redis.call('HGET', KEYS[2], 'started_ms') or '')
  local max_age = tonumber(ARGV[6])
  if max_age < 0 or (started and now - started <= max_age) then return {'done', st} end
end
if st ~= 'running' then redis.call('DEL', KEYS[3], KEYS[4]) end
attach()
local attempt = redis.call('HINCRBY', KEYS[2], 'attempt', 1)
redis.call('HSET', KEYS[2], 'fingerprint', ARGV[5], 'started_ms', now)
redis.call('SET', KEYS[1], ARGV[1] .. '/' .. attempt, 'PX', ARGV[2])
local f = {}
for i = 9, #ARGV do f[#f + 1] = ARGV[i] end
f[tonumber(ARGV[7])] = tostring(attempt)
local start = redis.call('XADD', KEYS[6], '*', unpack(f))
redis.call('XADD', KEYS[7], '*', unpack(f))
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(f))
redis.call('HSET', KEYS[2], 'fingerprint', ARGV[5], 'started_ms', now)
redis.call('PERSIST', KEYS[6])
redis.call('PERSIST', KEYS[7])
redis.call('PERSIST', KEYS[3])
if KEYS[8] then redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[8], '*', unpack(f)) end
return {'go', tostring(attempt), start}
"""
)
# KEYS: lock, state. ARGV: current value, "<consumer>/<entry>", lease ms.
_NEXT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local attempt = redis.call('HINCRBY', KEYS[2], 'attempt', 1)
redis.call('SET', KEYS[1], ARGV[2] .. '/' .. attempt, 'PX', ARGV[3])
return attempt
"""
# KEYS: lock. ARGV: value, lease ms.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: requesters. ARGV: the stop field. 1 while a request wants the job (one command per poll,
# no pipeline: the poll runs every 0.2 s of every running job).
_WANTED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return 1 - redis.call('HEXISTS', KEYS[1], ARGV[1])
"""
# KEYS: lock. ARGV: value.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass(frozen=True)
class Claim:
    """Outcome of :meth:`Lease.queue_begin`'s script (:meth:`Lease.claim`)."""

    #: go: the lease is ours for ``attempt``; locked: ``holder`` runs the job (this request was
    #: attached to it); done: it succeeded recently enough; conflict: the job id belongs to a
    #: different request (``holder`` says the job's state); cancelled: the request was cancelled
    #: before pickup.
    kind: Literal["go", "locked", "done", "conflict", "cancelled"]
    attempt: int = 0
    holder: str = ""
    #: cancelled by a cancel without request_id, and the last such request picked up: the job
    #: itself ends ``cancelled`` (unless another run holds it or it succeeded meanwhile).
    ends_job: bool = False
    #: go: the job-stream id of the attempt's running status (:meth:`Lease.queue_begin`).
    start_id: str | None = None

    @property
    def holder_entry(self) -> str:
        """The request entry id inside the holder's lock value."""
        parts = self.holder.split("/")
        return parts[1] if len(parts) == 3 else ""


class Lease:
    """The lease of one job, taken for one request entry.

    Args:
        rt: the service runtime.
        job_id: the job.
        entry_id: the request entry this delivery works on.
    """

    def __init__(self, rt: Runtime, job_id: str, entry_id: str) -> None:
        self._rt = rt
        self.job_id = job_id
        self.entry_id = entry_id
        self.requesters_key = rt.keys.requesters(job_id)
        self.lock_key = rt.keys.lock(job_id)
        self.state_key = rt.keys.state(job_id)
        self.owner = f"{rt.consumer}/{entry_id}"
        #: Current lock value (set once the lease is held).
        self.value = ""
        self.attempt = 0

    @property
    def _lease_ms(self) -> int:
        return int(self._rt.settings.lease_s * 1000)

    def queue_begin(
        self,
        pipe: Any,
        *,
        labels_json: str,
        fingerprint: str,
        max_age_s: int | None,
        running: Mapping[str, str | bytes],
        events: tuple[str, int] | None = None,
    ) -> None:
        """Queue the script that takes the lease and starts the next attempt, on a pipeline of the
        job's hash slot (the pickup's MULTI: one round trip with the ``queued`` answer); :meth:`claim`
        reads its reply. It does not start one when someone holds the lease (then this request is
        attached to the running job), the job succeeded within ``max_age_s``, the job id belongs to
        a request with another fingerprint, or the request was cancelled before pickup.

        Args:
            running: fields of the attempt's ``status running`` (any ``attempt``: the script puts
                the new number in), written when the attempt starts; :attr:`Claim.start_id` is its
                job-stream id.
            events: the events stream and its MAXLEN, for the running status's copy there (one
                Redis only: on a cluster the events stream is in another hash slot).
        """
        keys = self._rt.keys
        flat: list[str | bytes] = []
        at = 0
        for name, value in running.items():
            flat += [name, value]
            if name == "attempt":
                at = len(flat)
        if not at:
            raise ValueError("the running status's fields carry no attempt")
        job_keys = [
            self.lock_key,
            self.state_key,
            self.requesters_key,
            keys.detached(self.job_id),
            keys.cancelled(self.job_id),
            keys.job(self.job_id),
            keys.status_stream(self.job_id),
        ]
        if events is not None:
            job_keys.append(events[0])
        pipe.eval(
            _BEGIN,
            len(job_keys),
            *job_keys,
            self.owner,
            self._lease_ms,
            self.entry_id,
            labels_json,
            fingerprint,
            -1 if max_age_s is None else max_age_s * 1000,
            at,
            events[1] if events is not None else 0,
            *flat,
        )

    def claim(self, raw: Any) -> Claim:
        """The outcome in :meth:`queue_begin`'s script reply (holds the lease on ``go``)."""
        kind = _text(raw[0])
        if kind == "go":
            self.attempt = int(raw[1])
            self.value = f"{self.owner}/{self.attempt}"
            return Claim("go", attempt=self.attempt, start_id=_text(raw[2]))
        if kind == "locked":
            return Claim("locked", holder=_text(raw[1]))
        if kind == "conflict":
            return Claim("conflict", holder=_text(raw[1]))
        if kind == "cancelled":
            return Claim("cancelled", ends_job=_text(raw[1]) == "job")
        return Claim("done")

    async def wanted(self) -> bool:
        """Whether any request still wants the job: its requesters hash exists and holds no stop
        mark (a cancel of the last request, or of the whole job)."""
        raw: Any = await self._rt.redis.eval(_WANTED, 1, self.requesters_key, STOP_FIELD)
        return int(raw) == 1

    async def next_attempt(self) -> int | None:
        """Move the held lease to a new attempt number; None when the lease was lost."""
        raw: Any = await self._rt.redis.eval(
            _NEXT, 2, self.lock_key, self.state_key, self.value, self.owner, self._lease_ms
        )
        if int(raw) == 0:
            return None
        self.attempt = int(raw)
        self.value = f"{self.owner}/{self.attempt}"
        return self.attempt

    async def renew(self) -> bool:
        """Heartbeat: extend the lock and reset the entry's idle time. False when the lease is lost.

        A renewal sent with the previous attempt's value while :meth:`next_attempt` moves the lock
        finds the new value there: that is our lease, renewed again under its new value."""
        while True:
            value = self.value
            ok: Any = await self._rt.redis.eval(_RENEW, 1, self.lock_key, value, self._lease_ms)
            if int(ok) == 1:
                break
            if self.value == value:
                return False
        keys = self._rt.keys
        await self._rt.redis.xclaim(
            keys.requests, keys.group, self._rt.consumer, 0, [self.entry_id], justid=True
        )
        return True

    async def release(self) -> None:
        """Drop the lock if it is still ours (shutdown: the entry stays pending for a reclaimer)."""
        if self.value:
            await self._rt.redis.eval(_RELEASE, 1, self.lock_key, self.value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
