"""Blob stores: where a finished trace is kept as one object (local folder, S3, or memory for tests).

Example:
    >>> import asyncio
    >>> async def demo() -> str:
    ...     store = blob_store_from_url("memory://")
    ...     writer = await store.open_writer(trace_key("34d7c06d-3163-4111-863e-c5fc09d22d51", "j1"))
    ...     await writer.write(b"trace bytes")
    ...     info = await writer.commit()
    ...     return f"{info.size} {info.uri}"
    >>> asyncio.run(demo())
    '11 memory:///34d7c06d-3163-4111-863e-c5fc09d22d51/j1.pftrace'

Settings: TRACE_WORKER_BLOB_URL (default ``file://./traces``, resolved against the current directory
when the store is built), TRACE_WORKER_BLOB_S3_ENDPOINT / _REGION / _ACCESS_KEY_ID /
_SECRET_ACCESS_KEY / _ALLOW_HTTP, TRACE_WORKER_BLOB_URL_EXPIRES_S (lifetime of presigned URLs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.errors import BlobStoreError
from worker.sinks.blob.base import (
    META_SUFFIX,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobWriter,
    trace_key,
    validate_key,
)
from worker.sinks.blob.local import LocalBlobStore
from worker.sinks.blob.memory import MemoryBlobStore
from worker.sinks.blob.s3 import S3BlobStore

if TYPE_CHECKING:
    from worker.settings import Settings

__all__ = [
    "META_SUFFIX",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobWriter",
    "blob_store_from_settings",
    "blob_store_from_url",
    "trace_key",
    "validate_key",
]


def blob_store_from_url(
    url: str,
    *,
    endpoint: str | None = None,
    region: str = "us-east-1",
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    allow_http: bool = False,
    part_size: int | None = None,
    max_concurrency: int | None = None,
) -> BlobStore:
    """The store for ``file:///abs/dir``, ``file://./rel`` (relative to the current directory),
    ``s3://bucket/prefix`` or ``memory://`` (unit tests). The S3 options apply to s3:// only.

    Raises:
        BlobStoreError: unknown scheme or unusable location.
    """
    tuning: dict[str, int] = {}
    if part_size is not None:
        tuning["part_size"] = part_size
    if max_concurrency is not None:
        tuning["max_concurrency"] = max_concurrency
    if url.startswith("file://"):
        return LocalBlobStore.from_url(url, **tuning)
    if url.startswith("s3://"):
        return S3BlobStore(
            url,
            endpoint=endpoint,
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            allow_http=allow_http,
            **tuning,
        )
    if url == "memory://":
        return MemoryBlobStore()
    raise BlobStoreError(f"blob URL must be file://..., s3://bucket/prefix or memory://, not {url!r}")


def blob_store_from_settings(settings: Settings) -> BlobStore:
    """The store configured by ``TRACE_WORKER_BLOB_URL`` and ``TRACE_WORKER_BLOB_S3_*``."""
    key_id = settings.blob_s3_access_key_id
    secret = settings.blob_s3_secret_access_key
    return blob_store_from_url(
        settings.blob_url,
        endpoint=settings.blob_s3_endpoint,
        region=settings.blob_s3_region,
        access_key_id=key_id.get_secret_value() if key_id is not None else None,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        allow_http=settings.blob_s3_allow_http,
    )
