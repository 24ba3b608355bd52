"""Helpers of the client tests against real worker processes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from contracts import TraceRequest


def blob_path(root: Path, request: TraceRequest) -> Path:
    """Where a local-folder store under ``root`` keeps the request's trace."""
    return root / request.process_id / f"{request.effective_job_id()}.pftrace"


class Digest:
    """A writable that keeps only the size and sha256 of what it is given (large traces, no memory)."""

    def __init__(self) -> None:
        self.size = 0
        self._sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self._sha.update(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
