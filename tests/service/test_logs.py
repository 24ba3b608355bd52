"""Structured logs: JSON lines carry the job context; credentials never appear."""

from __future__ import annotations

import json
import logging

from worker.service.logs import JobLog, JsonFormatter, mask_url


def test_mask_url_hides_passwords() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:p%40ss@host/1") == "rediss://user:***@host/1"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_json_lines_carry_job_id_and_attempt() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.service.logs")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    JobLog(logger, {"job_id": "j1", "attempt": 2}).info("job %s", "succeeded")
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["message"] == "job succeeded" and line["job_id"] == "j1" and line["attempt"] == 2
    assert line["level"] == "INFO" and "time" in line
