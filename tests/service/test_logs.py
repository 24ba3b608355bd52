"""Structured logs: JSON lines carry the job context; credentials never appear."""

from __future__ import annotations

import json
import logging

import pytest
from redis.connection import parse_url

from worker.service.logs import JobLog, JsonFormatter, mask_url


def test_mask_url_hides_passwords() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:p%40ss@host/1") == "rediss://user:***@host/1"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:SECRET@host:6379/0",
        "redis://user:SECRET@host/0",
        "redis://:tail-SECRET@host@10.0.0.1:6379/0",  # unencoded @ in the password
        "redis://host:6379/0?password=SECRET",
        "redis://user@host/0?db=1&password=SECRET&socket_timeout=5",
        "rediss://u:SECRET@host/0?ssl_cert_reqs=none&password=SECRET",
        "unix:///run/redis.sock?password=SECRET&db=0",
        "unix://user:SECRET@/run/redis.sock?db=0",
    ],
)
def test_mask_url_hides_every_password_form_redis_py_reads(url: str) -> None:
    """Each URL gives redis-py a password holding SECRET (so the form is real); none survives."""
    assert "SECRET" in str(parse_url(url).get("password", ""))  # type: ignore[no-untyped-call]
    masked = mask_url(url)
    assert "SECRET" not in masked
    assert "***" in masked


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
