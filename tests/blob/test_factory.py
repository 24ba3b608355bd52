"""Building a store from a URL or from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.s3 import S3Bucket
from worker.errors import BlobStoreError
from worker.settings import Settings
from worker.sinks.blob import BlobStore, blob_store_from_settings, blob_store_from_url
from worker.sinks.blob.local import LocalBlobStore, parse_file_url
from worker.sinks.blob.memory import MemoryBlobStore
from worker.sinks.blob.s3 import S3BlobStore


def test_file_urls_resolve_against_the_current_directory(tmp_path: Path) -> None:
    assert parse_file_url("file://./traces", cwd=tmp_path) == tmp_path / "traces"
    assert parse_file_url("file://traces/x", cwd=tmp_path) == tmp_path / "traces" / "x"
    assert parse_file_url("file:///abs/dir", cwd=tmp_path) == Path("/abs/dir")
    assert parse_file_url("file://localhost/abs", cwd=tmp_path) == Path("/abs")
    with pytest.raises(BlobStoreError, match="not a file:// URL"):
        parse_file_url("s3://b/x")


def test_default_settings_give_a_folder_under_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = blob_store_from_settings(Settings(_env_file=None))
    assert isinstance(store, LocalBlobStore)
    assert store.root == (tmp_path / "traces").resolve()
    assert store.root.is_dir()
    assert store.uri("p/j.pftrace") == (tmp_path / "traces" / "p" / "j.pftrace").resolve().as_uri()


async def test_s3_from_settings(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_bucket.s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRACE_WORKER_BLOB_URL", s3_bucket.url("pfx"))
    store = blob_store_from_settings(Settings(_env_file=None))
    assert isinstance(store, S3BlobStore)
    await store.ping()
    await (await store.open_writer("k.pftrace")).commit()
    assert "pfx/k.pftrace" in s3_bucket.object_keys()


def test_memory_and_bad_schemes() -> None:
    assert isinstance(blob_store_from_url("memory://"), MemoryBlobStore)
    with pytest.raises(BlobStoreError, match="blob URL must be"):
        blob_store_from_url("http://example.com/x")


def test_implementations_satisfy_the_protocol(tmp_path: Path) -> None:
    for store in (LocalBlobStore(tmp_path), MemoryBlobStore(), S3BlobStore("s3://bucket")):
        assert isinstance(store, BlobStore)


async def test_local_ping_fails_when_the_folder_is_gone(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    with pytest.raises(BlobStoreError, match="missing or not writable"):
        await store.ping()


def test_unusable_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BlobStoreError, match="cannot use blob folder"):
        LocalBlobStore(tmp_path / "file" / "sub")
