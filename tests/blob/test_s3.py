"""S3-only behaviour: clear errors for a missing bucket or an unreachable endpoint."""

from __future__ import annotations

import time

import pytest

from tests.support.redis_server import free_port
from tests.support.s3 import MotoS3, S3Bucket
from worker.errors import BlobStoreError, BlobStoreRefused
from worker.sinks.blob import blob_store_from_url
from worker.sinks.blob.s3 import S3BlobStore, parse_s3_url


async def test_missing_bucket_is_a_clear_error(moto_s3: MotoS3) -> None:
    store = blob_store_from_url("s3://no-such-bucket/p", **moto_s3.options())
    with pytest.raises(BlobStoreError, match="bucket 'no-such-bucket' does not exist") as info:
        await store.ping()
    # permanent: a job fails at once rather than computing its trace again per retry
    assert isinstance(info.value, BlobStoreRefused)
    writer = await store.open_writer("p1/j.pftrace")
    await writer.write(b"x" * 1000)
    with pytest.raises(BlobStoreRefused, match="bucket 'no-such-bucket' does not exist"):
        await writer.commit()


async def test_unreachable_endpoint_fails_fast_and_clearly() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3BlobStore(
        "s3://bucket", endpoint=endpoint, access_key_id="k", secret_access_key="s", allow_http=True
    )
    started = time.monotonic()
    with pytest.raises(BlobStoreError, match=f"cannot reach S3 endpoint {endpoint}"):
        await store.ping()
    assert time.monotonic() - started < 30  # bounded retries, not obstore's default 3 minutes


async def test_keys_live_under_the_url_prefix(s3_bucket: S3Bucket) -> None:
    store = blob_store_from_url(s3_bucket.url("team/traces/"), **s3_bucket.s3.options())
    await (await store.open_writer("p/j.pftrace")).commit()
    assert s3_bucket.object_keys() == ["team/traces/p/j.pftrace", "team/traces/p/j.pftrace.meta.json"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "bad S3 bucket name"),
        ("s3://ab/x", "bad S3 bucket name"),
        ("s3://Upper/x", "bad S3 bucket name"),
        ("s3://bucket/../x", "blob key"),
        ("file:///x", "not an s3:// URL"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(BlobStoreError, match=message):
        parse_s3_url(url)


def test_url_parsing() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
