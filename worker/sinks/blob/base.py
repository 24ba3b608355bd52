"""The blob-store interface: where a finished trace lives as one object.

A writer streams bytes to a key; the object appears under that key only on :meth:`BlobWriter.commit`
(local folder: staged file + atomic rename; S3: multipart upload completed). :meth:`BlobWriter.abort`
leaves nothing behind. The sha256 is computed while streaming and kept in a small sidecar object
``<key>.meta.json`` (S3 metadata must be given before a multipart upload starts, when the digest is
not known yet), which records the object's size and ETag so a stale sidecar is never believed.

Keys are relative ``/``-separated paths of ``[A-Za-z0-9._-]`` segments: no absolute paths, no ``.``
or ``..`` segments, no empty segments, so no key can leave the store's folder or prefix.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from worker.errors import BlobStoreError

__all__ = [
    "META_SUFFIX",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobWriter",
    "trace_key",
    "validate_key",
]

#: Suffix of the sidecar object holding an object's sha256; reserved (no key may end with it).
META_SUFFIX = ".meta.json"
#: Longest key accepted (S3 allows 1024 bytes including the store's prefix).
MAX_KEY_LENGTH = 512

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class BlobNotFound(BlobStoreError):
    """The key names no object."""


@dataclass(frozen=True)
class BlobInfo:
    """A committed object."""

    #: Key inside the store.
    key: str
    #: Where it is: file:///abs/path or s3://bucket/prefix/key.
    uri: str
    size: int
    #: Lower-case hex sha256 of the whole object.
    sha256: str


@runtime_checkable
class BlobWriter(Protocol):
    """Streams one object. Use :meth:`commit` or :meth:`abort` exactly once."""

    async def write(self, data: bytes) -> None:
        """Append bytes (buffered; a full part is uploaded while the next one fills)."""

    async def commit(self) -> BlobInfo:
        """Finish: the object appears under its final key only now."""

    async def abort(self) -> None:
        """Give up: nothing is left behind (staged file removed / multipart upload aborted).

        A no-op after :meth:`commit` or a previous abort.
        """


@runtime_checkable
class BlobStore(Protocol):
    """A local folder or an S3-compatible bucket (or memory, for unit tests)."""

    def uri(self, key: str) -> str:
        """The object's URI (file:// or s3://); it need not exist."""

    async def open_writer(self, key: str) -> BlobWriter:
        """Start writing ``key`` (an existing object stays visible until the commit replaces it)."""

    async def stat(self, key: str) -> BlobInfo | None:
        """The committed object under ``key``, or None."""

    async def open_reader(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes as a stream of pieces; raises :class:`BlobNotFound`."""

    async def presign(self, key: str, expires_s: int) -> str | None:
        """A URL a client can fetch without credentials, or None where the store cannot make one.

        S3: a presigned GET URL. Local folder: the file:// URI (fetchable on the same machine).
        """

    async def delete(self, key: str) -> None:
        """Remove the object and its sidecar; a missing object is not an error."""

    async def ping(self) -> None:
        """Raise :class:`BlobStoreError` unless the store is usable (readiness)."""

    async def aclose(self) -> None:
        """Release resources."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key.

    Raises:
        BlobStoreError: absolute, empty, ``.``/``..`` segments, odd characters, reserved suffix.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise BlobStoreError(f"blob key must be 1-{MAX_KEY_LENGTH} characters: {key!r}")
    if key.startswith("/"):
        raise BlobStoreError(f"blob key must be relative: {key!r}")
    for segment in key.split("/"):
        if segment in (".", "..") or not _SEGMENT.match(segment):
            raise BlobStoreError(f"blob key segments are [A-Za-z0-9._-] and not '.' or '..': {key!r}")
    if key.endswith(META_SUFFIX):
        raise BlobStoreError(f"blob keys ending in {META_SUFFIX} are reserved: {key!r}")
    return key


def trace_key(process_id: str, job_id: str) -> str:
    """The deterministic key of a job's trace: ``<process_id>/<job_id>.pftrace``.

    Retries of a job write the same key, so the last committed attempt wins and nothing piles up.
    """
    return validate_key(f"{process_id}/{job_id}.pftrace")
