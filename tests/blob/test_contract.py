"""The blob-store contract, run against the local folder, moto S3 and the in-memory store."""

from __future__ import annotations

import asyncio
import hashlib
import random
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.blob.conftest import PART, StoreCase
from worker.errors import BlobStoreError
from worker.sinks.blob import META_SUFFIX, BlobNotFound, BlobWriter, trace_key

KEY = trace_key("34d7c06d-3163-4111-863e-c5fc09d22d51", "job-1")


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes: misordered or lost parts cannot hide behind repetition."""
    return random.Random(seed).randbytes(size)


async def read_all(case: StoreCase, key: str) -> bytes:
    return b"".join([piece async for piece in await case.store.open_reader(key)])


async def write(case: StoreCase, key: str, data: bytes, piece: int = 1 << 20) -> BlobWriter:
    writer = await case.store.open_writer(key)
    for start in range(0, len(data), piece):
        await writer.write(data[start : start + piece])
    return writer


async def test_round_trip_reports_size_sha_and_uri(case: StoreCase) -> None:
    data = payload(3 * 1024 * 1024 + 17)
    info = await (await write(case, KEY, data)).commit()
    assert (info.key, info.size, info.sha256) == (KEY, len(data), hashlib.sha256(data).hexdigest())
    assert info.uri == case.store.uri(KEY)
    assert await case.store.stat(KEY) == info
    assert await read_all(case, KEY) == data


async def test_uri_names_the_backend_location(case: StoreCase) -> None:
    uri = case.store.uri(KEY)
    if case.kind == "local":
        assert case.root is not None
        assert Path(urlparse(uri).path) == case.root.resolve() / KEY
    elif case.kind == "s3":
        assert case.bucket is not None
        assert uri == f"s3://{case.bucket.name}/pre/fix/{KEY}"
    else:
        assert uri.endswith(KEY)


async def test_object_invisible_until_commit(case: StoreCase) -> None:
    data = payload(2 * PART + 123)  # two full parts are uploaded before the commit
    writer = await write(case, KEY, data)
    assert await case.store.stat(KEY) is None
    with pytest.raises(BlobNotFound):
        await case.store.open_reader(KEY)
    if case.root is not None:
        assert not (case.root / KEY).exists()
    info = await writer.commit()
    assert info.size == len(data)
    assert await case.store.stat(KEY) == info


async def test_abort_leaves_nothing(case: StoreCase) -> None:
    writer = await write(case, KEY, payload(2 * PART + 5))
    await writer.abort()
    assert await case.store.stat(KEY) is None
    assert case.leftovers() == []


async def test_leaving_the_block_with_an_error_aborts(case: StoreCase) -> None:
    with pytest.raises(RuntimeError, match="source broke"):
        async with await case.store.open_writer(KEY) as writer:  # type: ignore[attr-defined]
            await writer.write(payload(PART + 1))
            raise RuntimeError("source broke")
    assert case.leftovers() == []


async def test_abort_keeps_the_previous_object(case: StoreCase) -> None:
    old = payload(1000, seed=1)
    await (await write(case, KEY, old)).commit()
    await (await write(case, KEY, payload(PART + 9, seed=2))).abort()
    assert await read_all(case, KEY) == old
    stat = await case.store.stat(KEY)
    assert stat is not None and stat.sha256 == hashlib.sha256(old).hexdigest()


async def test_commit_replaces_an_existing_object_and_its_checksum(case: StoreCase) -> None:
    await (await write(case, KEY, payload(5000, seed=1))).commit()
    new = payload(7000, seed=2)
    info = await (await write(case, KEY, new)).commit()
    assert await case.store.stat(KEY) == info
    assert info.sha256 == hashlib.sha256(new).hexdigest()
    assert await read_all(case, KEY) == new


async def test_concurrent_writers_to_different_keys(case: StoreCase) -> None:
    keys = [trace_key("34d7c06d-3163-4111-863e-c5fc09d22d51", f"job-{i}") for i in range(8)]
    datas = [payload(300_000 + i * 4099, seed=i) for i in range(8)]

    async def one(key: str, data: bytes) -> None:
        writer = await case.store.open_writer(key)
        for start in range(0, len(data), 65536):
            await writer.write(data[start : start + 65536])
            await asyncio.sleep(0)  # interleave the writers
        await writer.commit()

    await asyncio.gather(*(one(k, d) for k, d in zip(keys, datas, strict=True)))
    for key, data in zip(keys, datas, strict=True):
        stat = await case.store.stat(key)
        assert stat is not None and stat.sha256 == hashlib.sha256(data).hexdigest()
        assert await read_all(case, key) == data


async def test_large_multipart_object(case: StoreCase) -> None:
    data = payload(3 * PART + 777)
    info = await (await write(case, KEY, data, piece=999_983)).commit()
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await read_all(case, KEY) == data
    if case.bucket is not None:
        head = case.bucket.client.head_object(Bucket=case.bucket.name, Key=f"pre/fix/{KEY}")
        assert head["ETag"].strip('"').endswith("-4")  # four parts: proof of a multipart upload


async def test_empty_object(case: StoreCase) -> None:
    info = await (await case.store.open_writer(KEY)).commit()
    assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert await read_all(case, KEY) == b""


async def test_missing_object(case: StoreCase) -> None:
    assert await case.store.stat(KEY) is None
    with pytest.raises(BlobNotFound):
        await case.store.open_reader(KEY)
    await case.store.delete(KEY)  # not an error


async def test_delete_removes_object_and_checksum(case: StoreCase) -> None:
    await (await write(case, KEY, b"abc")).commit()
    await case.store.delete(KEY)
    assert await case.store.stat(KEY) is None
    assert case.leftovers() == []


@pytest.mark.parametrize(
    "key", ["", "/abs/x.pftrace", "../x", "a/../x", "a//b", "./x", "a/b c", "x" + META_SUFFIX, "a\\b"]
)
async def test_unsafe_keys_rejected(case: StoreCase, key: str) -> None:
    with pytest.raises(BlobStoreError, match="blob key"):
        await case.store.open_writer(key)
    with pytest.raises(BlobStoreError, match="blob key"):
        await case.store.stat(key)
    with pytest.raises(BlobStoreError, match="blob key"):
        await case.store.delete(key)


async def test_writer_used_once(case: StoreCase) -> None:
    writer = await write(case, KEY, b"abc")
    await writer.commit()
    with pytest.raises(BlobStoreError, match="already committed"):
        await writer.write(b"more")
    with pytest.raises(BlobStoreError, match="already committed"):
        await writer.commit()
    await writer.abort()  # a no-op after the commit
    assert await read_all(case, KEY) == b"abc"


async def test_presign(case: StoreCase) -> None:
    data = payload(70_000)
    await (await write(case, KEY, data)).commit()
    url = await case.store.presign(KEY, 60)
    if case.kind == "memory":
        assert url is None
        return
    assert url is not None
    if case.kind == "s3":
        assert url.startswith("http://") and "X-Amz-Signature=" in url
    else:
        assert url == case.store.uri(KEY)
    # Fetchable without credentials (urllib handles both http:// and file://).
    body = await asyncio.to_thread(_fetch, url)
    assert body == data


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
        return body


async def test_ping_ok(case: StoreCase) -> None:
    await case.store.ping()


async def test_stat_recomputes_when_the_checksum_sidecar_is_stale(case: StoreCase) -> None:
    await (await write(case, KEY, payload(10_000, seed=1))).commit()
    replaced = payload(12_345, seed=7)
    # Replace the object behind the store's back (a crash between object and sidecar looks like this).
    if case.root is not None:
        (case.root / KEY).write_bytes(replaced)
    elif case.bucket is None:
        case.store.objects[KEY] = replaced  # type: ignore[attr-defined]
    else:
        case.bucket.client.put_object(Bucket=case.bucket.name, Key=f"pre/fix/{KEY}", Body=replaced)
    stat = await case.store.stat(KEY)
    assert stat is not None
    assert (stat.size, stat.sha256) == (len(replaced), hashlib.sha256(replaced).hexdigest())
