"""Logging setup: text or JSON lines, job id and attempt on every job line, credentials masked."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from contracts.urls import mask_url

__all__ = ["JobLog", "JsonFormatter", "configure_logging", "mask_url"]

_CONTEXT = ("job_id", "attempt", "entry_id", "consumer")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{n}={getattr(record, n)}" for n in _CONTEXT if hasattr(record, n))
        return f"{line} [{context}]" if context else line


def configure_logging(fmt: str, level: str) -> None:
    """Route every logger (ours and FastStream's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # FastStream's own lines (task callbacks, per-message access) are noise unless debugging.
    logging.getLogger("worker.faststream").setLevel(level if level == "DEBUG" else "WARNING")


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds the job context (job id, attempt, entry id) to every record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs
