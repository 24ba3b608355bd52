"""A real S3-compatible server for tests: moto in server mode on a free loopback port.

(In-process ``mock_aws`` cannot intercept obstore's Rust HTTP client, so the server mode is needed.)
Import the fixtures into a conftest.py to use them::

    from tests.support.s3 import moto_s3, s3_bucket  # noqa: F401
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

__all__ = ["MotoS3", "S3Bucket", "moto_s3", "s3_bucket"]

REGION = "us-east-1"
ACCESS_KEY_ID = "test-key"
SECRET_ACCESS_KEY = "test-secret"


@dataclass(frozen=True)
class MotoS3:
    """A running moto server."""

    endpoint: str

    def client(self) -> Any:
        """A boto3 S3 client for it (close it when done)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def options(self) -> dict[str, Any]:
        """Keyword options for ``blob_store_from_url`` / ``S3BlobStore``."""
        return {
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key_id": ACCESS_KEY_ID,
            "secret_access_key": SECRET_ACCESS_KEY,
            "allow_http": True,
        }

    def env(self) -> dict[str, str]:
        """TRACE_WORKER_BLOB_S3_* variables for a worker subprocess (add TRACE_WORKER_BLOB_URL)."""
        return {
            "TRACE_WORKER_BLOB_S3_ENDPOINT": self.endpoint,
            "TRACE_WORKER_BLOB_S3_REGION": REGION,
            "TRACE_WORKER_BLOB_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "TRACE_WORKER_BLOB_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "TRACE_WORKER_BLOB_S3_ALLOW_HTTP": "true",
        }


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the moto server, with a client to look inside it."""

    s3: MotoS3
    name: str
    client: Any

    def url(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def object_keys(self) -> list[str]:
        """Every object key in the bucket."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def pending_uploads(self) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        return sorted(
            u["Key"] for u in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        )


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One moto S3 server for the session (buckets keep tests apart)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoS3(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> Iterator[S3Bucket]:
    """A new, empty bucket for one test."""
    client = moto_s3.client()
    name = f"tw-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    try:
        yield S3Bucket(s3=moto_s3, name=name, client=client)
    finally:
        client.close()
