"""The blob store over obstore: one implementation for the local folder and S3.

obstore's writer already gives the guarantee we need on both backends: bytes are buffered into parts
(``part_size``) and uploaded while the next part fills, at most ``max_concurrency`` parts in flight (so
memory is bounded whatever the trace size); the object appears only when the writer closes (S3: the
multipart upload completes; local folder: the staged ``<name>#<n>`` file in the same directory is
renamed over the final name). Leaving the writer with an exception aborts (S3: AbortMultipartUpload;
local: the staged file is removed).

Every obstore exception is translated into :class:`worker.errors.BlobStoreError` in
:meth:`ObstoreBlobStore._errors`, and nowhere else.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

from worker.errors import BlobStoreError, BlobStoreRefused
from worker.sinks.blob.base import META_SUFFIX, BlobInfo, BlobNotFound, validate_key

if TYPE_CHECKING:
    from obstore import AsyncWritableFile
    from obstore.store import ObjectStore

__all__ = ["DEFAULT_MAX_CONCURRENCY", "DEFAULT_PART_SIZE", "ObstoreBlobStore"]

#: Multipart part size (S3's minimum is 5 MiB, except for the last part).
DEFAULT_PART_SIZE = 8 * 1024 * 1024
#: Parts uploaded at once by one writer; memory per writer is about (this + 1) x part size.
DEFAULT_MAX_CONCURRENCY = 4
#: Pieces handed out by open_reader.
_READ_PIECE = 1024 * 1024
#: Writes at least this large are hashed in a worker thread (smaller ones are not worth the hop).
_HASH_IN_THREAD = 256 * 1024


class _Aborted(Exception):
    """Handed to obstore's writer ``__aexit__`` to make it abort rather than complete."""


#: Errors that no retry cures: the store refuses writes until someone changes its configuration.
_REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EROFS, errno.EISDIR})
#: The same, as obstore/S3 spell them in messages (obstore wraps io::Error and S3 codes in text).
_REFUSED_TEXT = (
    "NoSuchBucket",
    "AccessDenied",
    "Permission denied",
    "Not a directory",
    "Read-only file system",
    "Is a directory",
    *(f"os error {n})" for n in sorted(_REFUSED_ERRNOS)),
)
#: Name start of the small objects readiness writes and deletes at the top of the store (never a trace key).
PROBE_PREFIX = ".readyz"


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a permanent refusal of the store."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PermissionDeniedError | UnauthenticatedError | PermissionError):
            return True
        if isinstance(seen, OSError) and seen.errno in _REFUSED_ERRNOS:
            return True
        if any(marker in str(seen) for marker in _REFUSED_TEXT):
            return True
        seen = seen.__cause__
    return False


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ObstoreBlobStore:
    """A :class:`~worker.sinks.blob.base.BlobStore` over an obstore ``ObjectStore``.

    Subclasses give :meth:`uri`, :meth:`presign` and :meth:`_where` their backend meaning.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self._store = store
        self._part_size = part_size
        self._max_concurrency = max_concurrency

    def uri(self, key: str) -> str:
        return self._location(validate_key(key))

    # -- backend hooks
    def _location(self, key: str) -> str:
        """The URI of ``key`` (already validated, or a sidecar name)."""
        raise NotImplementedError

    def _where(self) -> str:
        """The store, for error messages."""
        raise NotImplementedError

    def _explain(self, exc: BaseException) -> str | None:
        """A clearer message for a backend-specific failure, or None."""
        return None

    async def presign(self, key: str, expires_s: int) -> str | None:
        return None

    async def _after_commit(self, key: str) -> None:
        """Called once ``key`` is complete (cleanup of what failed writers left)."""

    # -- error translation: the one place obstore exceptions are looked at
    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except BlobStoreError:
            raise
        except Exception as exc:
            what = f"{action} {self._location(key) if key else self._where()}"
            kind = BlobStoreRefused if _refused(exc) else BlobStoreError
            explained = self._explain(exc)
            if explained is not None:
                raise kind(f"{what}: {explained}") from exc
            if isinstance(exc, NotFoundError | FileNotFoundError) and kind is BlobStoreError:
                raise BlobNotFound(f"{what}: no such object") from exc
            if isinstance(exc, PermissionDeniedError | UnauthenticatedError | PermissionError):
                raise kind(f"{what}: access denied ({_first_line(exc)})") from exc
            raise kind(f"{what} failed: {_first_line(exc)}") from exc

    # -- BlobStore
    async def open_writer(self, key: str) -> _Writer:
        validate_key(key)
        with self._errors("open writer for", key):
            raw = obstore.open_writer_async(
                self._store, key, buffer_size=self._part_size, max_concurrency=self._max_concurrency
            )
        return _Writer(self, key, raw)

    async def stat(self, key: str) -> BlobInfo | None:
        validate_key(key)
        try:
            with self._errors("stat", key):
                meta = await obstore.head_async(self._store, key)
        except BlobNotFound:
            return None
        size = int(meta["size"])
        sha256 = await self._read_meta(key, size, meta.get("e_tag"))
        if sha256 is None:
            # No sidecar, or one left by an earlier object under this key: recompute (streamed).
            digest = hashlib.sha256()
            async for piece in await self.open_reader(key):
                digest.update(piece)
            sha256 = digest.hexdigest()
        return BlobInfo(key=key, uri=self.uri(key), size=size, sha256=sha256)

    async def open_reader(self, key: str) -> AsyncIterator[bytes]:
        validate_key(key)
        with self._errors("read", key):
            result = await obstore.get_async(self._store, key)
        return self._pieces(key, result.stream(min_chunk_size=_READ_PIECE))

    async def _pieces(self, key: str, stream: Any) -> AsyncIterator[bytes]:
        while True:
            with self._errors("read", key):
                try:
                    piece = await stream.__anext__()
                except StopAsyncIteration:
                    return
            yield bytes(piece)

    async def delete(self, key: str) -> None:
        validate_key(key)
        for name in (key, key + META_SUFFIX):
            try:
                with self._errors("delete", name):
                    await obstore.delete_async(self._store, name)
            except BlobNotFound:
                pass

    async def ping(self) -> None:
        """Write and delete a small object ``.readyz-<pid>-<uuid>`` at the top of the store (it must
        accept a write, not merely answer a listing). Callers rate-limit it (``worker.service.readiness``).

        Raises:
            BlobStoreRefused: the store refuses writes (permission, missing bucket, not a folder).
            BlobStoreError: any other failure.
        """
        name = f"{PROBE_PREFIX}-{os.getpid()}-{uuid.uuid4().hex}"
        with self._errors("write a probe object to", None):
            await obstore.put_async(self._store, name, b"ready")
        with self._errors("delete the probe object from", None):
            await obstore.delete_async(self._store, name)

    async def aclose(self) -> None:
        """Nothing to release: obstore's HTTP client is dropped with the store."""

    # -- sidecar
    async def _write_meta(self, key: str, size: int, sha256: str) -> None:
        with self._errors("stat", key):
            head = await obstore.head_async(self._store, key)
        body = json.dumps({"v": 1, "size": size, "sha256": sha256, "e_tag": head.get("e_tag")})
        with self._errors("write checksum of", key):
            await obstore.put_async(self._store, key + META_SUFFIX, body.encode())

    async def _read_meta(self, key: str, size: int, e_tag: str | None) -> str | None:
        try:
            with self._errors("read checksum of", key):
                result = await obstore.get_async(self._store, key + META_SUFFIX)
                raw = bytes(await result.bytes_async())
        except BlobNotFound:
            return None
        try:
            meta = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("size") != size or meta.get("e_tag") != e_tag:
            return None
        sha = meta.get("sha256")
        return sha if isinstance(sha, str) else None


_OPEN, _COMMITTED, _ABORTED = "open", "committed", "aborted"


class _Writer:
    """One object being written; sha256 and size are computed as bytes pass through."""

    def __init__(self, owner: ObstoreBlobStore, key: str, raw: AsyncWritableFile) -> None:
        self._owner = owner
        self._key = key
        self._raw = raw
        self._sha = hashlib.sha256()
        self._size = 0
        self._state = _OPEN

    async def __aenter__(self) -> _Writer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Abort unless committed: leaving the block early never publishes a partial object."""
        await self.abort()

    def _check_open(self) -> None:
        if self._state != _OPEN:
            raise BlobStoreError(f"writer for {self._owner.uri(self._key)} is already {self._state}")

    async def write(self, data: bytes) -> None:
        self._check_open()
        self._size += len(data)
        try:
            if len(data) >= _HASH_IN_THREAD:
                # hashlib lets go of the GIL on large buffers: the digest runs beside the encoder
                # instead of stalling the event loop (about 1 ms per MiB).
                await asyncio.to_thread(self._sha.update, data)
            else:
                self._sha.update(data)
            with self._owner._errors("write", self._key):
                await self._raw.write(data)
        except BaseException:
            await self.abort()
            raise

    async def commit(self) -> BlobInfo:
        self._check_open()
        try:
            with self._owner._errors("commit", self._key):
                await self._raw.close()
        except BaseException:
            await self.abort()
            raise
        self._state = _COMMITTED
        await self._owner._after_commit(self._key)
        sha256 = self._sha.hexdigest()
        await self._owner._write_meta(self._key, self._size, sha256)
        return BlobInfo(key=self._key, uri=self._owner.uri(self._key), size=self._size, sha256=sha256)

    async def abort(self) -> None:
        if self._state != _OPEN:
            return
        self._state = _ABORTED
        # Already closed, or the abort request failed (S3 then expires the upload by lifecycle rule).
        with suppress(Exception):
            await self._raw.__aexit__(_Aborted, _Aborted("aborted"), None)
