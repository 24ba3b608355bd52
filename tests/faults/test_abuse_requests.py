"""Abuse of the request surface, against a real worker process through Redis: hypothesis-made
entries (malformed JSON, wrong types, oversize fields and maps, unicode, control characters, SQL
injection and path traversal in every string, absurd ranges, huge label maps, entries without the
`request` field, binary garbage). Each gets a clear answer (terminal status or dead letter), the
worker never exits, and nothing is written outside the key prefix or the blob folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings

from contracts import Keys
from contracts.request import JOB_ID_PATTERN
from tests.faults.abuse import entries, parses, wait_for_answer
from tests.support.chaos import scan_keys
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer

KEYS = Keys("t")
_JOB_KEY = re.compile(r"^t:job:\{(?P<job>.*)\}(:state|:lock|:requesters|:detached|:cancelled)?$", re.DOTALL)
_VALID_JOB = re.compile(JOB_ID_PATTERN)


def _fuzz(redis_server: RedisServer, server: DevServer, spawn: Spawn, tmp_path: Path, examples: int) -> None:
    blobs = tmp_path / "blobs"
    worker = spawn(worker_env(redis_server.url, server.url, blobs.as_uri(), TRACE_WORKER_RETRY_MAX="0"))
    client = redis.Redis.from_url(redis_server.url)
    outcomes: dict[str, int] = {}
    pids = [p.process_id for p in server.lake.processes]
    try:

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(entries(pids))
        @example({b"request": b'{"process_id": "nope", "job_id": "abc\\n"}'})  # $ matches before \n
        @example({b"request": b'{"process_id": "nope", "job_id": "../../etc/x"}'})
        @example({b"request": b'{"process_id": "nope", "job_id": "a}:x:{b"}'})
        def case(fields: dict[bytes, bytes]) -> None:
            request = parses(fields)
            job_from = "0-0"
            if request is not None:
                tail: Any = client.xrevrange(KEYS.job(request.effective_job_id()), count=1)
                job_from = tail[0][0].decode() if tail else "0-0"
            entry: Any = client.xadd(KEYS.requests, fields)  # type: ignore[arg-type]
            answer = wait_for_answer(client, KEYS, entry.decode(), request, job_from)
            outcomes[answer] = outcomes.get(answer, 0) + 1
            assert worker.poll() is None, "the worker exited"

        case()
        pending: Any = client.xpending(KEYS.requests, KEYS.group)
        assert pending["pending"] == 0
    finally:
        client.close()
    print(f"abuse outcomes: {outcomes}")
    assert outcomes.get("dead", 0) > examples // 10 and outcomes.get("failed", 0) > 0
    # nothing outside the prefix; every job key names a valid job id
    for key in scan_keys(redis_server.url):
        assert key.startswith("t:"), key
        match = _JOB_KEY.match(key)
        if match:
            assert _VALID_JOB.fullmatch(match["job"]), f"a key for an invalid job id: {key!r}"
    # nothing outside the blob folder's <process uuid>/<job id>.pftrace layout
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".log")]
    for path in written:
        rel = path.relative_to(blobs)
        assert len(rel.parts) == 2 and rel.parts[0] in pids, rel
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}\.pftrace(\.meta\.json)?", rel.parts[1]), rel


def test_request_fuzz(
    redis_server: RedisServer, mixed_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    _fuzz(redis_server, mixed_devserver, spawn_worker, tmp_path, examples=150)


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_request_fuzz_long(
    redis_server: RedisServer, mixed_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    _fuzz(redis_server, mixed_devserver, spawn_worker, tmp_path, examples=2000)
