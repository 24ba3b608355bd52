"""The live progress display of `trace-worker request` / `demo` on a terminal and on a pipe."""

from __future__ import annotations

import io

from contracts import JobState, ProgressEvent, StatusEvent
from worker.commands._client_cli import ProgressLine, format_size


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress(percent: float, spans: int) -> ProgressEvent:
    return ProgressEvent(
        job_id="j", attempt=1, phase="threads", spans=spans, bytes=spans * 40,
        threads_done=2, threads_total=5, percent=percent,
    )  # fmt: skip


def test_on_a_terminal_one_line_is_rewritten() -> None:
    out = Tty()
    line = ProgressLine(out)
    line(StatusEvent(job_id="j", state=JobState.RUNNING, attempt=1))
    line(progress(50.0, 123_456))
    line(progress(60.0, 200_000))  # within 0.1 s of the previous one: skipped
    line(StatusEvent(job_id="j", state=JobState.SUCCEEDED, attempt=1))
    line.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "[##########..........]  50.0%  threads" in text and "123,456 spans" in text
    assert "threads 2/5" in text and "00:00" in text and "succeeded attempt 1" in text
    assert "200,000" not in text


def test_on_a_pipe_status_lines_always_progress_rate_limited() -> None:
    out = io.StringIO()
    line = ProgressLine(out)
    line(StatusEvent(job_id="j", state=JobState.RUNNING, attempt=2, detail="retry"))
    line(progress(10.0, 10))
    line(progress(20.0, 20))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("running   attempt 2") and "(retry)" in lines[0]
    assert len(lines) == 2 and "10.0%" in lines[1]


def test_on_a_pipe_every_phase_gets_a_line() -> None:
    out = io.StringIO()
    line = ProgressLine(out)
    line(StatusEvent(job_id="j", state=JobState.RUNNING, attempt=1))
    for phase in ("start", "threads", "threads", "async", "finishing"):  # all within 2 s
        line(ProgressEvent(job_id="j", attempt=1, phase=phase, spans=5, bytes=9, percent=1.0))
    phases = [text.split("%")[1].split()[0] for text in out.getvalue().splitlines()[1:]]
    assert phases == ["start", "threads", "async", "finishing"]  # not stuck at the first one


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    ProgressLine(out, enabled=False)(progress(10.0, 10))
    assert out.getvalue() == ""


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 5 * 2**20 + 2**19, 3 * 2**30)] == [
        "0 B", "1023 B", "1.0 KiB", "5.5 MiB", "3.0 GiB",
    ]  # fmt: skip
