"""Where a downloaded trace goes, and fetching a blob-only trace from its URL. Stdlib only.

A :class:`TraceSink` writes to a path (through ``<path>.part``, renamed on success, so a failed
download never leaves a truncated file under the requested name) or to a caller's binary writable,
synchronous (``write(bytes)``, e.g. a file or ``io.BytesIO``) or asynchronous (``async def
write(bytes)``, e.g. an aiofiles file or an asyncio ``StreamWriter``-like object): whatever
``write`` returns is awaited when it is awaitable. It can start over when the job restarts as a
new attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from contracts.client_errors import ClientError, InvalidRequest, TraceIntegrityError

__all__ = ["TraceSink", "Writable", "fetch_url"]

_PIECE = 1024 * 1024


class Writable(Protocol):
    """Anything with ``write(bytes)``, plain or ``async``; ``seek``/``truncate`` (plain or async)
    make an attempt restart possible; ``flush`` (plain or async) is called at the end.

    ``write`` may return the number of bytes it took (a short count is written again from there,
    as for a raw file), None, or an awaitable of either.
    """

    def write(self, data: bytes, /) -> object: ...


async def _settle(result: object) -> object:
    """The value of a writer method's result, awaited when it is awaitable."""
    if inspect.isawaitable(result):
        return await result
    return result


class TraceSink:
    """Receives one trace's bytes, counting size and sha256 as they pass."""

    def __init__(self, target: str | os.PathLike[str] | Writable) -> None:
        self.path: Path | None = None
        #: The file we opened (path targets), closed by commit/discard.
        self._owned: BinaryIO | None = None
        self._file: Writable
        if isinstance(target, str | os.PathLike):
            self.path = Path(target)
            self._part = self.path.with_name(self.path.name + ".part")
            try:
                self._owned = open(self._part, "wb")  # noqa: SIM115 - closed in commit/discard
            except OSError as exc:
                raise ClientError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
            self._file = self._owned
        else:
            write = getattr(target, "write", None)
            if not callable(write):
                raise InvalidRequest(
                    f"cannot download into a {type(target).__name__}: pass a path, or an object with a "
                    "write(bytes) method (plain or async)"
                )
            self._file = target
        self._restart()

    def _restart(self) -> None:
        self.size = 0
        self._sha = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` (awaiting an async writer; a short count writes the rest).

        Raises:
            ClientError: the writer took nothing, or returned something that is not a count.
        """
        if self._owned is not None:
            self._owned.write(data)
        else:
            piece = data
            while piece:
                taken = await _settle(self._file.write(piece))
                if taken is None:
                    break  # a writer that does not count (e.g. a StreamWriter) takes everything
                if not isinstance(taken, int) or isinstance(taken, bool) or taken <= 0:
                    raise ClientError(
                        f"the writer's write() returned {taken!r} for {len(piece)} bytes; expected the "
                        "number of bytes written or None"
                    )
                piece = piece[taken:]
        self.size += len(data)
        self._sha.update(data)

    async def reset(self) -> None:
        """Start over (a new attempt began): forget what was written."""
        if self.size:
            seek = getattr(self._file, "seek", None)
            truncate = getattr(self._file, "truncate", None)
            if seek is None or truncate is None:
                raise ClientError(
                    "the job restarted as a new attempt after bytes were written to a writable that "
                    "cannot seek; download again (the job stream keeps every attempt)"
                )
            await _settle(seek(0))
            await _settle(truncate(0))
        self._restart()

    def verify(self, size: int | None, sha256: str | None) -> None:
        """Raise :class:`TraceIntegrityError` unless the bytes match the terminal status."""
        if size is not None and size != self.size:
            raise TraceIntegrityError(f"received {self.size} bytes, the job reported {size}")
        if sha256 is not None and sha256 != self.sha256:
            raise TraceIntegrityError(f"sha256 {self.sha256} does not match the job's {sha256}")

    async def commit(self) -> None:
        """Finish: a path target appears under its name only now."""
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            await _settle(flush())
        if self._owned is not None and self.path is not None:
            self._owned.close()
            os.replace(self._part, self.path)

    def discard(self) -> None:
        """Give up: a path target leaves no file behind."""
        if self._owned is not None:
            self._owned.close()
            self._part.unlink(missing_ok=True)


async def fetch_url(url: str, sink: TraceSink, timeout_s: float = 60.0, *, gzip: bool = False) -> None:
    """Copy the object at ``url`` (http(s):// signed URL or file:// path) into ``sink``.

    Reads happen in a worker thread (blocking I/O), writes on the caller's loop. With ``gzip`` the
    object is a gzip-compressed trace (status ``encoding: gzip``): the sink gets the plain bytes, so
    it checks the status's ``size`` and ``sha256`` (those of the plain trace) as for a plain blob.

    Raises:
        ClientError: the URL cannot be read.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ClientError(f"cannot fetch a trace from {url!r}: only http(s):// and file:// URLs")
    src: Any = None
    try:
        if scheme == "file":
            path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
            src = await asyncio.to_thread(open, path, "rb")
        else:
            src = await asyncio.to_thread(urllib.request.urlopen, url, timeout=timeout_s)  # scheme checked
        await _copy(src, sink, gzip=gzip)
    except (OSError, zlib.error) as exc:  # URLError and HTTPError are OSErrors
        raise ClientError(f"cannot fetch the trace from {url.split('?', maxsplit=1)[0]}: {exc}") from exc
    finally:
        if src is not None:
            src.close()


async def _copy(src: BinaryIO, sink: TraceSink, *, gzip: bool = False) -> None:
    plain = zlib.decompressobj(31) if gzip else None
    while piece := await asyncio.to_thread(src.read, _PIECE):
        if plain is not None:
            # Bounded output per call, so a small compressed piece cannot balloon in memory.
            piece = plain.decompress(piece, _PIECE)
            while piece:
                await sink.write(piece)
                piece = plain.decompress(plain.unconsumed_tail, _PIECE)
            continue
        await sink.write(piece)
    if plain is not None:
        rest = plain.flush()
        if rest:
            await sink.write(rest)
        if not plain.eof:
            raise zlib.error("the gzip stream ends early")
