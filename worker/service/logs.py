"""Logging setup: text or JSON lines, job id and attempt on every job line, credentials masked."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from contracts.urls import mask_url

__all__ = ["JobLog", "JsonFormatter", "configure_logging", "faststream_logger", "mask_url"]

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
    faststream_logger().setLevel(level if level == "DEBUG" else "WARNING")


class _DropCancelled(logging.Filter):
    """Drops FastStream's ERROR report of a handler it cancelled. FastStream cancels a handler only
    when the worker stops and ``drain_timeout_s`` has passed; that cancellation is the job's release,
    which the job logs itself ("released for reclaim"), so the traceback would report a normal stop
    as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


_DROP_CANCELLED = _DropCancelled()


def faststream_logger() -> logging.Logger:
    """The logger handed to FastStream (its lines go through our handlers and format, not its stdout),
    without its reports of handlers cancelled at shutdown."""
    logger = logging.getLogger("worker.faststream")
    logger.addFilter(_DROP_CANCELLED)  # (once: addFilter skips a filter already there)
    return logger


class JobLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds the job context (job id, attempt, entry id) to every record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs
