"""A blob writer that stores the trace gzip-compressed, for requests with ``compress: "gzip"``.

The object is one gzip member (RFC 1952, zlib's ``wbits=31``, no file name, mtime 0: the same trace
gives the same object), which Perfetto's UI and trace processor open directly. Compression runs in a
worker thread (zlib releases the GIL), one chunk at a time in order, so the event loop stays free.

The writer also counts the *plain* bytes and their sha256: the job reports those as the succeeded
status's ``size`` and ``sha256`` (the same as the chunks on the job stream), and the stored object's
size as ``stored_size``.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib

from worker.service.ports import BlobInfoLike, BlobWriterLike

__all__ = ["GzipWriter"]


class GzipWriter:
    """Compresses what is written and passes it on to ``inner`` (the store's writer)."""

    def __init__(self, inner: BlobWriterLike, level: int = 1) -> None:
        self._inner = inner
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._sha = hashlib.sha256()
        #: Plain bytes written so far.
        self.size = 0

    @property
    def sha256(self) -> str:
        """Hex sha256 of the plain bytes written so far."""
        return self._sha.hexdigest()

    def _compress(self, data: bytes) -> bytes:
        self._sha.update(data)
        return self._zlib.compress(data)

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        out = await asyncio.to_thread(self._compress, data)
        if out:
            await self._inner.write(out)

    async def commit(self) -> BlobInfoLike:
        await self._inner.write(self._zlib.flush())
        return await self._inner.commit()

    async def abort(self) -> None:
        await self._inner.abort()
