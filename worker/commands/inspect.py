"""`trace-worker inspect FILE [--json]`: print a trace's tracks, sizes and defects; exit 1 on a defect."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.cli import UsageError
from worker.inspect import InspectReport, TrackSummary, inspect_trace

__all__ = ["register"]

#: Tracks sharing a kind and name are printed as one line when there are more than this many.
_GROUP_OVER = 5


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="decode a Perfetto trace and report tracks, slices, logs, counter values and defects",
        description="Decode a Perfetto trace file; list tracks, slice, log message and counter value "
        "counts, time span, interned table sizes and defects (partial overlaps, unterminated slices, iids "
        "used before definition, log messages off threads, counter values off counter tracks, malformed "
        "packets, ...). Exit status 1 if there is a defect.",
    )
    parser.add_argument("file", type=Path, help="trace file (concatenated chunks are fine)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    report = inspect_trace(path, progress=progress_printer(path))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report, str(path)))
    return 0 if report.ok else 1


#: Files at least this large get a progress line on stderr while they are decoded.
LONG_FILE = 64 << 20


def progress_printer(path: Path) -> Callable[[int], None] | None:
    """A progress callback printing "inspect: decoded X of Y MB" lines on stderr, for long files only."""
    total = path.stat().st_size
    if total < LONG_FILE:
        return None

    def show(done: int) -> None:
        tail = ", done" if done >= total else ""
        print(
            f"inspect: decoded {done / 1e6:,.0f} of {total / 1e6:,.0f} MB{tail}", file=sys.stderr, flush=True
        )

    return show


def _time(ns: int) -> str:
    if 0 < ns < 1 << 62:
        dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
        return f"{dt:%Y-%m-%d %H:%M:%S}.{ns % 1_000_000_000:09d}Z ({ns})"
    return str(ns)


def _counts(tracks: list[TrackSummary]) -> str:
    """ "slices=N", then "logs=N" and "counter_values=N" where there are any (counter tracks always)."""
    out = f"slices={sum(t.slices for t in tracks)}"
    logs = sum(t.logs for t in tracks)
    values = sum(t.counter_values for t in tracks)
    if logs:
        out += f" logs={logs}"
    if values or tracks[0].kind == "counter":
        out += f" counter_values={values}"
    return out


def render(report: InspectReport, name: str) -> str:
    """The human-readable report."""
    lines = [f"{name}: {report.bytes} bytes, {report.packets} packets, {report.track_events} track events"]
    if report.first_ts is not None and report.last_ts is not None:
        span = (report.last_ts - report.first_ts) / 1e9
        lines.append(f"time span: {_time(report.first_ts)} .. {_time(report.last_ts)} ({span:.6f} s)")
    lines.append("interned: " + ", ".join(f"{k}={v}" for k, v in report.interned.items()))
    lines.append(
        f"tracks: {len(report.tracks)}, slices: {report.slices}, logs: {report.logs}, "
        f"counter values: {report.counter_values}"
    )
    groups: dict[tuple[str, str], list[TrackSummary]] = defaultdict(list)
    for track in report.tracks:
        groups[(track.kind, track.name)].append(track)
    for (kind, track_name), members in groups.items():
        if len(members) > _GROUP_OVER:
            lines.append(f"  {kind:<9} {track_name!r} x{len(members)} tracks  {_counts(members)}")
            continue
        for t in members:
            ids = f" pid={t.pid}" if t.kind == "process" else f" tid={t.tid}" if t.kind == "thread" else ""
            lines.append(f"  {kind:<9} {track_name!r}{ids} uuid={t.uuid}  {_counts([t])}")
    if report.ok:
        lines.append("defects: none")
    else:
        total = sum(report.defect_counts.values())
        lines.append(f"defects: {total} ({', '.join(f'{k}={v}' for k, v in report.defect_counts.items())})")
        for d in report.defects:
            where = f" [packet {d.packet}]" if d.packet is not None else ""
            lines.append(f"  {d.kind}: {d.message}{where}")
    return "\n".join(lines)
