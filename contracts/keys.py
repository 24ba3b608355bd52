"""Every Redis key and stream name of the wire contract, built from (prefix, job_id).

Per-job keys share the hash tag ``{<job_id>}`` so that everything one job touches lives in one
Redis Cluster slot (a MULTI or Lua script over them is legal on a cluster).

Example:
    >>> k = Keys("traces")
    >>> k.requests, k.job("j1"), k.state("j1"), k.status_stream("j1")
    ('traces:requests', 'traces:job:{j1}', 'traces:job:{j1}:state', 'traces:job:{j1}:status')
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PREFIX", "Keys"]

#: Default key prefix (setting TRACE_WORKER_KEY_PREFIX).
DEFAULT_PREFIX = "traces"


@dataclass(frozen=True)
class Keys:
    """Names under one key prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def requests(self) -> str:
        """Stream of trace requests, read by the workers' consumer group."""
        return f"{self.prefix}:requests"

    @property
    def cancels(self) -> str:
        """Stream of cancel entries (``job_id``, optional ``request_id``), read by the workers."""
        return f"{self.prefix}:cancels"

    @property
    def group(self) -> str:
        """Consumer group of the workers on the request stream."""
        return f"{self.prefix}:workers"

    @property
    def events(self) -> str:
        """Stream of every status transition of every job."""
        return f"{self.prefix}:events"

    @property
    def dead(self) -> str:
        """Dead-letter stream: original entry, delivery count, reason."""
        return f"{self.prefix}:dead"

    def job(self, job_id: str) -> str:
        """Per-job stream of status, progress and chunk entries."""
        return f"{self.prefix}:job:{{{job_id}}}"

    def status_stream(self, job_id: str) -> str:
        """Per-job stream of the status and progress entries only (no chunks): the job stream
        without its bytes, for followers that want to know how a job goes but not its trace.
        Added in contract v1.1; same entries, same order as on the job stream, but kept as long as
        the state hash (``job_ttl_s``) while the job stream, holding the chunk bytes, expires sooner
        (``chunk_ttl_s``)."""
        return f"{self.job(job_id)}:status"

    def state(self, job_id: str) -> str:
        """Hash with the job's latest state, for one-call polling."""
        return f"{self.job(job_id)}:state"

    def requesters(self, job_id: str) -> str:
        """Worker-owned hash: request id -> labels JSON of every request attached to the running job."""
        return f"{self.job(job_id)}:requesters"

    def detached(self, job_id: str) -> str:
        """Worker-owned set: request ids cancelled while the job ran (never re-attached)."""
        return f"{self.job(job_id)}:detached"

    def cancelled(self, job_id: str) -> str:
        """Worker-owned set: request ids cancelled before a worker picked them up."""
        return f"{self.job(job_id)}:cancelled"

    def chunk_ids(self, job_id: str) -> str:
        """Worker-internal string: ``<attempt> <entry id>;`` of every chunk entry the job's running
        attempts wrote (appended in the chunk's own script), so the job's end deletes the chunks
        of the attempts that did not succeed, whichever worker wrote them, without reading them."""
        return f"{self.job(job_id)}:chunk_ids"

    def lock(self, job_id: str) -> str:
        """Worker-internal: which delivery currently owns the job."""
        return f"{self.job(job_id)}:lock"
