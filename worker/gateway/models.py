"""JSON shapes of the HTTP API (they make the OpenAPI document). Times are RFC 3339 UTC strings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from worker.model import ProcessInfo
from worker.source.catalog import LogEntry, ProcessStats

__all__ = [
    "ErrorOut",
    "JobAccepted",
    "JobLinks",
    "LogEntryOut",
    "LogsOut",
    "ProcessListOut",
    "ProcessOut",
    "ProcessStatsOut",
    "ThreadOut",
    "iso",
]


def iso(ns: int | None) -> str | None:
    """Epoch nanoseconds as RFC 3339 UTC with microseconds (None stays None)."""
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="a contract error code (docs/PROTOCOL.md) or a gateway one (docs/GATEWAY.md)"
    )
    message: str
    retryable: bool = False


class ErrorOut(BaseModel):
    """Every error answer."""

    error: ErrorDetail


class ProcessOut(BaseModel):
    """A process the analytics service knows."""

    process_id: str
    exe: str
    username: str = ""
    computer: str = ""
    start_time: str | None = None
    last_time: str | None = None

    @classmethod
    def of(cls, p: ProcessInfo) -> ProcessOut:
        return cls(
            process_id=p.process_id,
            exe=p.exe,
            username=p.username,
            computer=p.computer,
            start_time=iso(p.start_time_ns),
            last_time=iso(p.last_time_ns),
        )


class ProcessListOut(BaseModel):
    """A page of processes, newest first."""

    items: list[ProcessOut]
    search: str | None
    limit: int
    offset: int
    #: More processes match after this page.
    has_more: bool


class ThreadOut(BaseModel):
    stream_id: str
    thread_name: str
    thread_id: str


class ProcessStatsOut(BaseModel):
    """Counts over the process's recorded range (``begin``..``end``)."""

    process: ProcessOut
    distro: str = ""
    cpu_brand: str = ""
    begin: str | None
    end: str | None
    duration_s: float | None
    threads: int
    thread_list: list[ThreadOut]
    thread_spans: int
    async_spans: int
    log_entries: int

    @classmethod
    def of(cls, s: ProcessStats) -> ProcessStatsOut:
        p = s.process
        first, last = p.first_time_ns, p.last_time_ns
        return cls(
            process=ProcessOut.of(p),
            distro=p.distro,
            cpu_brand=p.cpu_brand,
            begin=iso(first),
            end=iso(last),
            duration_s=(last - first) / 1e9 if first is not None and last is not None else None,
            threads=len(s.threads),
            thread_list=[
                ThreadOut(stream_id=t.stream_id, thread_name=t.thread_name, thread_id=t.thread_id)
                for t in s.threads
            ],
            thread_spans=s.thread_spans,
            async_spans=s.async_spans,
            log_entries=s.log_entries,
        )


class LogEntryOut(BaseModel):
    time: str
    #: 1 fatal, 2 error, 3 warn, 4 info, 5 debug, 6 trace.
    level: int
    level_name: str
    target: str
    msg: str

    @classmethod
    def of(cls, e: LogEntry) -> LogEntryOut:
        return cls(
            time=iso(e.time_ns) or "", level=e.level, level_name=e.level_name, target=e.target, msg=e.msg
        )


class LogsOut(BaseModel):
    """Log lines, newest first."""

    process_id: str
    items: list[LogEntryOut]


class JobLinks(BaseModel):
    self: str
    events: str
    trace: str


class JobAccepted(BaseModel):
    """A trace request was put on the request stream; follow ``links.events``."""

    job_id: str
    #: The job's state when answered (``queued`` while the request waits; ``submitted`` when Redis
    #: has nothing on it yet).
    state: str
    request: dict[str, Any]
    links: JobLinks


def job_links(job_id: str) -> JobLinks:
    base = f"/api/traces/{job_id}"
    return JobLinks(self=base, events=f"{base}/events", trace=f"{base}/trace")
