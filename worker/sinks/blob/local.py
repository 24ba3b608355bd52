"""Local folder blob store (the default: ``file://./traces``).

Objects are files under the root folder. A writer stages ``<name>#<n>`` next to the final file and
renames it over the final name on commit (atomic on one file system), so a reader never sees a
half-written trace. A process killed mid-write can leave a staged ``#`` file behind; it is never
mistaken for a trace, and the next completed write of the same key (the job's next attempt)
removes it.

Example:
    >>> store = LocalBlobStore.from_url("file:///tmp/traces")
    >>> store.uri("p/j.pftrace")
    'file:///tmp/traces/p/j.pftrace'
"""

from __future__ import annotations

import asyncio
import glob
import os
from pathlib import Path

from obstore.store import LocalStore

from worker.errors import BlobStoreError, BlobStoreRefused
from worker.sinks.blob._obstore import DEFAULT_MAX_CONCURRENCY, DEFAULT_PART_SIZE, ObstoreBlobStore

__all__ = ["LocalBlobStore", "parse_file_url"]


def parse_file_url(url: str, cwd: Path | None = None) -> Path:
    """The folder of a ``file://`` URL: ``file:///abs/dir`` or ``file://./rel`` (relative to ``cwd``).

    Raises:
        BlobStoreError: not a file:// URL.
    """
    if not url.startswith("file://"):
        raise BlobStoreError(f"not a file:// URL: {url!r}")
    rest = url[len("file://") :]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    path = Path(rest or ".")
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    return Path(os.path.normpath(path))


class LocalBlobStore(ObstoreBlobStore):
    """Traces as files under ``root`` (created if missing)."""

    def __init__(
        self,
        root: Path,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self.root = root.resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            store = LocalStore(self.root)
        except (OSError, ValueError) as exc:
            raise BlobStoreError(f"cannot use blob folder {self.root}: {exc}") from exc
        super().__init__(store, part_size=part_size, max_concurrency=max_concurrency)

    @classmethod
    def from_url(cls, url: str, **options: int) -> LocalBlobStore:
        """From ``file:///abs/dir`` or ``file://./rel`` (relative to the current directory)."""
        return cls(parse_file_url(url), **options)

    def _location(self, key: str) -> str:
        return (self.root / key).as_uri()

    def _where(self) -> str:
        return f"blob folder {self.root}"

    async def _after_commit(self, key: str) -> None:
        """Remove staged ``<name>#<n>`` files of writers killed mid-write (a crashed attempt of the
        same job): the object is complete now, so any staged sibling is dead weight. Any still-live
        writer of this key has lost its job's lease; its own commit then fails (its file is gone).

        obstore stages a writer at the lowest free ``#n``, so a killed writer leaves ``#1`` unless
        writers of the key ran at once: the folder (every trace of the process) is listed only when
        ``#1`` is there, not on every commit."""
        final = self.root / key
        if not os.path.lexists(f"{final}#1"):  # noqa: ASYNC240 - one lstat: cheaper than a thread hop
            return

        def sweep() -> None:
            for staged in final.parent.glob(glob.escape(final.name) + "#*"):
                if staged.name[len(final.name) + 1 :].isdigit():
                    staged.unlink(missing_ok=True)

        await asyncio.to_thread(sweep)

    async def presign(self, key: str, expires_s: int) -> str | None:
        """The file:// URI: fetchable by a client on the same machine (nothing to sign locally)."""
        return self.uri(key)

    async def ping(self) -> None:
        """A real small write and delete (``os.access`` says yes to root even on a read-only mount).

        Raises:
            BlobStoreError: the root folder is gone.
            BlobStoreRefused: the root is not a folder, or refuses the write (permission, read-only).
        """
        if not self.root.exists():
            raise BlobStoreError(f"blob folder {self.root} is missing or not writable (it is gone)")
        if not self.root.is_dir():
            raise BlobStoreRefused(f"blob folder {self.root} is missing or not writable (not a folder)")
        await super().ping()
