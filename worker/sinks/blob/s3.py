"""S3-compatible blob store (``s3://bucket/prefix``).

Writes are streamed multipart uploads: the object exists under its key only once the upload
completes; an aborted writer sends AbortMultipartUpload, so no parts are left to pay for (add a
bucket lifecycle rule ``AbortIncompleteMultipartUpload`` for uploads of killed processes).
:meth:`S3BlobStore.presign` gives a GET URL a client can fetch without credentials.

Example:
    >>> store = S3BlobStore("s3://traces/prod", endpoint="http://127.0.0.1:9000", allow_http=True)
    >>> store.uri("p/j.pftrace")
    's3://traces/prod/p/j.pftrace'
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.store import S3Store

from worker.errors import BlobStoreError
from worker.sinks.blob._obstore import DEFAULT_MAX_CONCURRENCY, DEFAULT_PART_SIZE, ObstoreBlobStore
from worker.sinks.blob.base import validate_key

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = ["S3BlobStore", "parse_s3_url"]

_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]`` (prefix without slashes at either end).

    Raises:
        BlobStoreError: not an s3:// URL, or a bad bucket name or prefix.
    """
    if not url.startswith("s3://"):
        raise BlobStoreError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= _BUCKET_CHARS:
        raise BlobStoreError(f"bad S3 bucket name in {url!r} (3-63 of a-z 0-9 . -)")
    if prefix:
        validate_key(prefix)
    return bucket, prefix


class S3BlobStore(ObstoreBlobStore):
    """Objects under ``s3://bucket/prefix`` on AWS or any S3-compatible endpoint."""

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        allow_http: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint = endpoint
        client: ClientConfig = {"allow_http": allow_http, "connect_timeout": timedelta(seconds=5)}
        # Fail within seconds: the worker retries a job with its own backoff, and readiness must answer.
        retry: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}
        config: dict[str, str] = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        if access_key_id is not None and secret_access_key is not None:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        try:
            store = S3Store(
                self.bucket,
                prefix=self.prefix or None,
                client_options=client,
                retry_config=retry,
                **config,  # type: ignore[arg-type]
            )
        except Exception as exc:
            raise BlobStoreError(f"bad S3 configuration for {url}: {exc}") from exc
        self._s3 = store
        super().__init__(store, part_size=part_size, max_concurrency=max_concurrency)

    def _location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{key}" if self.prefix else f"s3://{self.bucket}/{key}"

    def _where(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint}" if self.endpoint else where

    def _explain(self, exc: BaseException) -> str | None:
        text = str(exc)
        if "NoSuchBucket" in text:
            at = f" at {self.endpoint}" if self.endpoint else ""
            return f"bucket {self.bucket!r} does not exist{at}"
        if "error sending request" in text or "Connection refused" in text:
            return f"cannot reach S3 endpoint {self.endpoint or 'of AWS'}"
        return None

    async def presign(self, key: str, expires_s: int) -> str | None:
        """A presigned GET URL valid for ``expires_s`` seconds."""
        validate_key(key)
        with self._errors("presign", key):
            url: str = await obstore.sign_async(self._s3, "GET", key, timedelta(seconds=expires_s))
        return url
