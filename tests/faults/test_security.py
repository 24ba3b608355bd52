"""The claims of docs/SECURITY.md, one test each: credentials never reach logs, events, errors, state
hashes, dead letters or the AsyncAPI document; hostile job ids and process ids are refused before
they reach a key, a path or a query; a requester's resource use is bounded by the limits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, Keys, TraceRequest
from tests.faults.workers import run_job
from tests.service.support import ScriptedGenerator, fast_settings
from tests.support.devserver import small_lake, start_devserver
from tests.support.redis_server import RedisServer
from tests.support.s3 import S3Bucket
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer
from worker.errors import BlobStoreError, InvalidRequest
from worker.service.app import Service
from worker.sinks.blob.base import validate_key
from worker.sinks.blob.memory import MemoryBlobStore
from worker.source import queries

REDIS_PW = "redis-Pw-4b1d9c"
TOKEN = "flight-Tok-77e2a0"
WRONG_TOKEN = "flight-Wrong-0c5f31"
S3_SECRET = "s3-Secret-9d0e4f"
SECRETS = (REDIS_PW, TOKEN, WRONG_TOKEN, S3_SECRET)


@pytest.fixture(scope="module")
def token_devserver() -> Iterator[DevServer]:
    with start_devserver(small_lake(), token=TOKEN) as server:
        yield server


def _everything_in_redis(client: redis.Redis) -> bytes:
    """Every key name and value in the database (streams entry by entry, hashes field by field)."""
    out = bytearray()
    for key in client.scan_iter(count=1000):
        out += key
        kind: Any = client.type(key)
        pairs: list[tuple[Any, Any]] = []
        if kind == b"stream":
            entries: Any = client.xrange(key)
            pairs = [kv for _, fields in entries for kv in fields.items()]
        elif kind == b"hash":
            mapping: Any = client.hgetall(key)
            pairs = list(mapping.items())
        elif kind == b"string":
            pairs = [(b"", client.get(key) or b"")]
        for k, v in pairs:
            out += bytes(k) + b"=" + bytes(v)
    return bytes(out)


def _logs(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob("worker-*.log")))


async def test_credentials_stay_out_of_logs_events_errors_and_state(
    redis_server: RedisServer,
    token_devserver: DevServer,
    spawn_worker: Spawn,
    s3_bucket: S3Bucket,
    tmp_path: Path,
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("requirepass", REDIS_PW)
    admin.close()
    authed = f"redis://:{REDIS_PW}@127.0.0.1:{redis_server.port}/0"
    s3_env = {**s3_bucket.s3.env(), "TRACE_WORKER_BLOB_S3_SECRET_ACCESS_KEY": S3_SECRET}
    # worker t: password in the URL, the right token; worker u: password from its own variable, a wrong token
    common = {"TRACE_WORKER_LOG_LEVEL": "DEBUG", "TRACE_WORKER_RETRY_MAX": "0", **s3_env}
    good = worker_env(
        authed, token_devserver.url, s3_bucket.url("t"), TRACE_WORKER_FLIGHTSQL_TOKEN=TOKEN, **common
    )
    bad = worker_env(
        f"redis://127.0.0.1:{redis_server.port}/0",
        token_devserver.url,
        s3_bucket.url("u"),
        TRACE_WORKER_KEY_PREFIX="u",
        TRACE_WORKER_REDIS_PASSWORD=REDIS_PW,
        TRACE_WORKER_FLIGHTSQL_TOKEN=WRONG_TOKEN,
        **common,
    )
    workers = [spawn_worker(good, "good"), spawn_worker(bad, "bad")]
    client = Redis.from_url(authed)
    try:
        pid = token_devserver.lake.processes[0].process_id
        ok, _ = await run_job(client, TraceRequest(process_id=pid, job_id="ok"))
        assert ok.state == JobState.SUCCEEDED, ok.message
        assert ok.url and S3_SECRET not in ok.url  # presigned: signed with the secret, never holds it
        unknown, _ = await run_job(client, TraceRequest(process_id=str(uuid.uuid4()), job_id="unknown"))
        assert unknown.error_code == ErrorCode.PROCESS_NOT_FOUND
        await client.xadd(Keys("t").requests, {"request": b'{"process_id": "nope", "job_id": "bad-input"}'})
        refused, _ = await run_job(client, TraceRequest(process_id=pid, job_id="refused"), keys=Keys("u"))
        assert refused.state == JobState.FAILED and refused.error_code == ErrorCode.UNAUTHENTICATED
        assert refused.message
    finally:
        await client.aclose()
    for proc in workers:
        assert proc.poll() is None
        proc.terminate()
        proc.wait(timeout=30)
    sync = redis.Redis.from_url(authed)
    try:
        stored = _everything_in_redis(sync)
    finally:
        sync.close()
    assert b"unauthenticated" in stored and b"bad-input" in stored  # what we look through is there
    logs = _logs(tmp_path)
    assert b"starting consumer" in logs
    for secret in SECRETS:
        assert secret.encode() not in stored, f"{secret} in Redis"
        assert secret.encode() not in logs, f"{secret} in the logs"


@pytest.mark.parametrize("password_in", ["url", "setting"])
def test_asyncapi_document_holds_no_redis_password(password_in: str) -> None:
    if password_in == "url":
        settings = fast_settings(f"redis://:{REDIS_PW}@127.0.0.1:6399/0")
    else:
        settings = fast_settings("redis://127.0.0.1:6399/0", redis_password=REDIS_PW)
    service = Service(settings, generator=ScriptedGenerator(), store=MemoryBlobStore())
    doc = service.asyncapi_json()
    assert "127.0.0.1:6399" in doc and REDIS_PW not in doc


@pytest.mark.parametrize(
    "job_id", ["../x", "..\\x", "a/b", "/etc/passwd", "a b", "x\n", "{x}", "é", "a" * 129, ""]
)
def test_hostile_job_ids_are_refused(job_id: str) -> None:
    with pytest.raises(ValueError, match="job_id"):
        TraceRequest(process_id=str(uuid.uuid4()), job_id=job_id)


@pytest.mark.parametrize("key", ["../x.pftrace", "a/../../b", "/abs", "a//b", "a/./b", "a\\b", "a\x00b"])
def test_blob_keys_cannot_leave_the_store(key: str) -> None:
    with pytest.raises(BlobStoreError, match="blob key"):
        validate_key(key)


@pytest.mark.parametrize(
    "value", ["'; DROP TABLE processes; --", "x' OR '1'='1", "00000000-0000-0000-0000-000000000000' --"]
)
def test_injected_ids_never_reach_sql(value: str) -> None:
    with pytest.raises(InvalidRequest):
        queries.process_sql(value)
    with pytest.raises(ValueError):
        TraceRequest(process_id=value)


async def test_limits_bound_what_one_request_can_cost(
    redis_server: RedisServer, token_devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    env = worker_env(
        redis_server.url,
        token_devserver.url,
        blobs.as_uri(),
        TRACE_WORKER_FLIGHTSQL_TOKEN=TOKEN,
        TRACE_WORKER_MAX_SPANS="1000",
        TRACE_WORKER_MAX_RANGE_S="3600",
        TRACE_WORKER_MAX_REQUEST_BYTES="1024",
    )
    worker = spawn_worker(env)
    client = Redis.from_url(redis_server.url)
    try:
        process = token_devserver.lake.processes[0]
        big, _ = await run_job(client, TraceRequest(process_id=process.process_id, job_id="too-many-spans"))
        assert big.error_code == ErrorCode.TRACE_TOO_LARGE and big.message and "1000" in big.message
        long_range = TraceRequest.model_validate(
            {
                "process_id": process.process_id,
                "job_id": "too-long",
                "begin": "2000-01-01T00:00:00Z",
                "end": "2030-01-01T00:00:00Z",
            }
        )
        too_long, _ = await run_job(client, long_range)
        assert too_long.error_code == ErrorCode.RANGE_TOO_LONG
        labels = {f"k{i}": "v" * 200 for i in range(8)}  # valid, but over the 1 kB request limit
        fat, _ = await run_job(
            client, TraceRequest(process_id=process.process_id, job_id="fat", labels=labels)
        )
        assert (
            fat.error_code == ErrorCode.INVALID_REQUEST and fat.message and "max_request_bytes" in fat.message
        )
        dead: Any = await client.xrange(Keys("t").dead)
        assert any(fields[b"job_id"] == b"fat" for _, fields in dead)
        assert not list(blobs.rglob("*.pftrace"))
        assert worker.poll() is None
    finally:
        await client.aclose()
