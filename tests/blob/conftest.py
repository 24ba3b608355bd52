"""Blob-store fixtures: every behaviour test runs against the local folder, moto S3 and memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.s3 import S3Bucket, moto_s3, s3_bucket  # noqa: F401
from worker.sinks.blob import BlobStore, blob_store_from_url

#: Smallest part S3 accepts; small parts make multipart uploads cheap to test.
PART = 5 * 1024 * 1024


@dataclass
class StoreCase:
    """A store under test plus a way to see every object it left behind (incl. staged files)."""

    kind: str
    store: BlobStore
    root: Path | None = None
    bucket: S3Bucket | None = None

    def leftovers(self) -> list[str]:
        """Everything in the backend: files under the folder, or S3 keys + unfinished uploads."""
        if self.root is not None:
            return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())
        if self.bucket is not None:
            return self.bucket.object_keys() + [f"upload:{k}" for k in self.bucket.pending_uploads()]
        objects: dict[str, bytes] = getattr(self.store, "objects")  # noqa: B009
        return sorted(objects)


@pytest.fixture(params=["local", "s3", "memory"])
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreCase]:
    if request.param == "local":
        root = tmp_path / "blobs"
        result = StoreCase("local", blob_store_from_url(root.as_uri(), part_size=PART), root=root)
    elif request.param == "s3":
        bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        store = blob_store_from_url(bucket.url("pre/fix"), part_size=PART, **bucket.s3.options())
        result = StoreCase("s3", store, bucket=bucket)
    else:
        result = StoreCase("memory", blob_store_from_url("memory://"))
    try:
        yield result
    finally:
        await result.store.aclose()
