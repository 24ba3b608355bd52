"""In-memory blob store for narrow unit tests (pure Python; same contract as the real stores).

Not obstore's MemoryStore: its background runtime can abort the interpreter at exit
(measured: SIGABRT in about half the runs of a 5-line script), which would kill a test run.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from types import TracebackType

from worker.errors import BlobStoreError
from worker.sinks.blob.base import BlobInfo, BlobNotFound, validate_key

__all__ = ["MemoryBlobStore"]


class MemoryBlobStore:
    """Objects in a dict; a writer's bytes become visible only on commit."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        #: Writers opened and neither committed nor aborted (tests check nothing leaks).
        self.open_writers = 0

    def uri(self, key: str) -> str:
        return f"memory:///{validate_key(key)}"

    async def open_writer(self, key: str) -> _MemoryWriter:
        validate_key(key)
        self.open_writers += 1
        return _MemoryWriter(self, key)

    async def stat(self, key: str) -> BlobInfo | None:
        data = self.objects.get(validate_key(key))
        if data is None:
            return None
        return BlobInfo(key=key, uri=self.uri(key), size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def open_reader(self, key: str) -> AsyncIterator[bytes]:
        data = self.objects.get(validate_key(key))
        if data is None:
            raise BlobNotFound(f"read {self.uri(key)}: no such object")
        return _pieces(data)

    async def presign(self, key: str, expires_s: int) -> str | None:
        return None

    async def delete(self, key: str) -> None:
        self.objects.pop(validate_key(key), None)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def _pieces(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class _MemoryWriter:
    def __init__(self, owner: MemoryBlobStore, key: str) -> None:
        self._owner = owner
        self._key = key
        self._parts: list[bytes] = []
        self._state = "open"

    async def __aenter__(self) -> _MemoryWriter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.abort()

    async def write(self, data: bytes) -> None:
        if self._state != "open":
            raise BlobStoreError(f"writer for {self._owner.uri(self._key)} is already {self._state}")
        self._parts.append(bytes(data))

    async def commit(self) -> BlobInfo:
        if self._state != "open":
            raise BlobStoreError(f"writer for {self._owner.uri(self._key)} is already {self._state}")
        self._state = "committed"
        self._owner.open_writers -= 1
        data = b"".join(self._parts)
        self._parts = []
        self._owner.objects[self._key] = data
        sha = hashlib.sha256(data).hexdigest()
        return BlobInfo(key=self._key, uri=self._owner.uri(self._key), size=len(data), sha256=sha)

    async def abort(self) -> None:
        if self._state == "open":
            self._state = "aborted"
            self._owner.open_writers -= 1
            self._parts = []
