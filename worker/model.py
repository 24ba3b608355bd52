"""Plain value types shared by the source (which produces them) and the engine (which consumes them).

No third-party imports: the source, the engine and the sinks stay independent of each other.
Times are integer nanoseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ProcessInfo", "ThreadInfo", "TimeRange"]


@dataclass(frozen=True)
class TimeRange:
    """A closed range [begin_ns, end_ns] of epoch nanoseconds."""

    begin_ns: int
    end_ns: int

    def __post_init__(self) -> None:
        if self.begin_ns > self.end_ns:
            raise ValueError(f"time range begins after it ends: {self.begin_ns} > {self.end_ns}")


@dataclass(frozen=True)
class ProcessInfo:
    """The traced process, as the analytics service describes it."""

    process_id: str
    exe: str
    username: str = ""
    realname: str = ""
    computer: str = ""
    distro: str = ""
    cpu_brand: str = ""
    #: When the process started (epoch ns), if known.
    start_time_ns: int | None = None
    #: First and last recorded times of the process's data, if known.
    first_time_ns: int | None = None
    last_time_ns: int | None = None
    #: Extra key/value labels worth showing (sorted when written, for determinism).
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ThreadInfo:
    """One thread of the process: a Micromegas stream tagged 'cpu'."""

    stream_id: str
    #: Thread name from the stream's properties ("" when the thread is unnamed).
    thread_name: str = ""
    #: Thread id as the source spells it ("" when missing); may collide between streams.
    thread_id: str = ""
    #: Objects recorded in the thread's blocks in the range (Micromegas ``blocks.nb_objects``; about
    #: two per span upstream, one per row on the devserver), None when the source did not say: a
    #: size known before any span query.
    objects: int | None = None
