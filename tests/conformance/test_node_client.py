"""A Node client written from docs/PROTOCOL.md only (tests/conformance/node/client.mjs) against a real
worker process, the devserver and a real redis-server: derived job id computed in Node, its own
answers followed, chunks verified against the status and the blob, cancel then resubmit, a
duplicate, a malformed request naming an existing job, a connection dropped mid-stream, and cancels
of a job whose request still waits for a worker and of a job that never existed."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from contracts import JobState, Keys, StatusEvent, TraceRequest
from contracts.events import CancelEvent, CancelOutcome, ChunkEvent
from contracts.vectors import VECTORS_FILE
from tests.client.test_cancel_waiting import cancel, stuck_worker
from tests.conformance.conftest import NODE_DIR
from tests.service.support import JobReader, submit
from tests.support.chaos import ChaosProxy
from tests.support.redis_server import RedisServer
from tests.support.worker_process import Spawn, worker_env
from worker.devserver import DevServer


async def run_node(node: str, *args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "client.mjs"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_node_computes_every_job_id_vector(node: str) -> None:
    result = await run_node(node, "vectors", str(VECTORS_FILE))
    data = json.loads(VECTORS_FILE.read_text())
    assert result == {"ok": True, "vectors": len(data["vectors"]), "rejected": len(data["rejected_times"])}


async def test_node_client_scenarios(
    node: str, redis_server: RedisServer, devserver: DevServer, spawn_worker: Spawn, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    spawn_worker(worker_env(redis_server.url, devserver.url, blobs.as_uri()))
    pid = devserver.lake.processes[0].process_id
    url = redis_server.url

    # 1. no job_id: Node derives it; the answer and the chunks verify against status and blob
    raw = json.dumps({"process_id": pid.upper(), "span_types": "both", "labels": {"who": "node"}})
    first = await run_node(node, "request", url, "t", raw, str(tmp_path / "a.pftrace"))
    expected_id = TraceRequest.model_validate_json(raw).effective_job_id()
    assert first["job_id"] == expected_id and first["state"] == "succeeded" and first["verified"]
    data = (tmp_path / "a.pftrace").read_bytes()
    assert data == (blobs / pid / f"{expected_id}.pftrace").read_bytes()
    assert hashlib.sha256(data).hexdigest() == first["sha256"] and first["labels"] == {"who": "node"}
    mine = [s for s in first["statuses"] if s["request_id"] == first["request_id"]]
    assert [s["state"] for s in mine] == ["queued", "running", "succeeded"]

    # 2. a duplicate within max_age_s: answered at once, chunks re-read from start_id
    dup = await run_node(node, "request", url, "t", raw, str(tmp_path / "b.pftrace"))
    assert dup["state"] == "succeeded" and dup["attempt"] == first["attempt"] and dup["reread_from"]
    assert "duplicate" in dup["detail"] and (tmp_path / "b.pftrace").read_bytes() == data

    # 3. cancel its own request, then resubmit: the resubmission is not killed by the cancel
    large = devserver.lake.processes[1].process_id  # still running when the cancel lands
    cancel_raw = json.dumps({"process_id": large, "job_id": "node-c", "span_types": "thread"})
    cancelled = await run_node(node, "request", url, "t", cancel_raw, str(tmp_path / "c.pftrace"), "--cancel")
    # sent at the pickup ack: the request is either attached already or about to be (PROTOCOL §5)
    assert cancelled["state"] == "cancelled" and cancelled["cancel_outcome"] in ("cancelled", "pending")
    cancel_raw = json.dumps({"process_id": pid, "job_id": "node-c", "span_types": "thread"})
    again = await run_node(node, "request", url, "t", cancel_raw, str(tmp_path / "c.pftrace"))
    assert again["state"] == "succeeded" and again["verified"]

    # 4. a malformed request naming an existing job is answered on that job's stream
    bad = json.dumps({"process_id": pid, "job_id": "node-c", "span_types": "all"})
    refused = await run_node(node, "request", url, "t", bad, str(tmp_path / "d.pftrace"))
    assert refused["state"] == "failed" and refused["error_code"] == "invalid_request"

    # 5. the reader's connection is killed mid-stream; it resumes from the last id it processed
    fresh = json.dumps({"process_id": pid, "max_age_s": 0, "chunks": True})
    resumed = await run_node(
        node, "request", url, "t", fresh, str(tmp_path / "e.pftrace"), "--drop-after-chunks", "1"
    )
    assert resumed["state"] == "succeeded" and resumed["verified"] and resumed["reconnects"] >= 1


async def test_node_cancels_a_waiting_job_and_an_unknown_one(  # noqa: PLR0917 - fixtures
    node: str,
    redis: aioredis.Redis,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    keys, url = Keys("t"), redis_server.url
    small = devserver.lake.processes[0].process_id
    async with stuck_worker(redis, devserver, spawn_worker, url, tmp_path / "blobs"):
        entry = await submit(redis, keys, TraceRequest(process_id=small, job_id="node-q"))
        waiting = asyncio.create_task(run_node(node, "cancel", url, "t", "node-q", "--until-ended"))
        answer = await JobReader(redis, keys, "node-q").read_until(lambda e: isinstance(e, CancelEvent), 120)
        assert isinstance(answer, CancelEvent) and answer.outcome == CancelOutcome.PENDING
        assert (await cancel(redis, "blocker")).outcome == CancelOutcome.CANCELLED  # frees the slot
        report = await waiting
    assert (report["outcome"], report["request_id"], report["job_state"]) == ("pending", None, "cancelled")
    assert report["answered"] == [
        {"request_id": entry, "state": "queued"},
        {"request_id": entry, "state": "cancelled"},
    ]
    assert report["job_attempt"] == 0 and report["ttl"] > 600  # the job stream's own TTL, not 60 s
    ghost = await run_node(node, "cancel", url, "t", "node-ghost")
    assert ghost["outcome"] == "not_found" and 0 < ghost["ttl"] <= 60


async def test_node_joins_a_running_job_mid_stream_and_falls_back_to_the_blob(  # noqa: PLR0917 - fixtures
    node: str,
    redis: aioredis.Redis,
    redis_server: RedisServer,
    devserver: DevServer,
    spawn_worker: Spawn,
    tmp_path: Path,
) -> None:
    """§2 read literally: a request joining a job whose stream already holds chunks of the running
    attempt reads them from start_id; a duplicate after the job stream expired is answered without
    chunks/start_id and the client takes the blob (§4)."""
    keys, url, blobs = Keys("t"), redis_server.url, tmp_path / "blobs"
    large = devserver.lake.processes[1].process_id
    request = TraceRequest(process_id=large, job_id="node-join", span_types="thread")
    raw = request.model_dump_json(exclude_none=True)
    with ChaosProxy(("127.0.0.1", devserver.port)) as proxy:
        spawn_worker(worker_env(url, f"grpc://127.0.0.1:{proxy.port}", blobs.as_uri()))
        entry = await submit(redis, keys, request)
        reader = JobReader(redis, keys, "node-join")
        await reader.read_until(lambda e: isinstance(e, ChunkEvent), within=120)
        proxy.set_mode("stall")  # the job holds: the Node client joins with chunks already on the stream
        joining = asyncio.create_task(
            run_node(node, "request", url, "t", raw, str(tmp_path / "j.pftrace"), "--file-root", str(blobs))
        )
        joined = await reader.read_until(
            lambda e: isinstance(e, StatusEvent) and "joined" in (e.detail or ""), within=120
        )
        assert isinstance(joined, StatusEvent) and joined.state == JobState.RUNNING
        assert joined.request_id != entry
        proxy.set_mode("pass")
        report = await joining
    first = await reader.read_until(
        lambda e: isinstance(e, StatusEvent) and e.request_id == entry and e.state.terminal, 120
    )
    assert isinstance(first, StatusEvent) and first.state == JobState.SUCCEEDED
    assert report["state"] == "succeeded" and report["verified"] and report["sha256"] == first.sha256
    assert report["reread_from"] == first.start_id and report["joined_mid_stream"]["seq"] > 0
    data = (tmp_path / "j.pftrace").read_bytes()
    assert data == (blobs / large / "node-join.pftrace").read_bytes()

    # the job stream expires (chunk_ttl_s) while the status says succeeded: a duplicate is answered
    # without chunks and start_id, and the client takes the blob
    await redis.delete(keys.job("node-join"))
    out = str(tmp_path / "k.pftrace")
    dup = await run_node(node, "request", url, "t", raw, out, "--file-root", str(blobs))
    assert dup["state"] == "succeeded" and dup["verified"] and dup["fetched"] == "file", dup
    assert (dup["start_id"], dup["chunks"]) == (None, "0") and "expired" in dup["detail"]
    assert (tmp_path / "k.pftrace").read_bytes() == data
