"""Logging setup: text or JSON lines, job id and attempt on every job line, credentials masked."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["JobLog", "JsonFormatter", "configure_logging", "mask_url"]

_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>.*)$", re.DOTALL)
#: Query parameters that carry a credential (redis-py passes any query parameter to the connection).
_SECRET_PARAM = re.compile(
    r"(?P<name>[^&=?#]*(?:pass|pwd|secret|token|key|auth)[^&=#]*)=(?P<value>[^&#]*)", re.I
)
_CONTEXT = ("job_id", "attempt", "entry_id", "consumer")


def mask_url(url: str) -> str:
    """The URL with every password replaced by ``***`` (safe to log), in each form redis-py reads.

    The user info runs to the *last* ``@`` before the query (as ``urllib`` splits it, so an
    unencoded ``@`` or ``/`` in a password is masked whole); the user name before the first ``:``
    stays. Query parameters whose names say pass/pwd/secret/token/key/auth (``?password=``) are
    masked too.

    >>> mask_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    >>> mask_url("redis://:tail@SECRET@host/0?password=x&db=1")
    'redis://:***@host/0?password=***&db=1'
    """
    m = _SCHEME.match(url)
    scheme, rest = (m["scheme"], m["rest"]) if m else ("", url)
    head, sep, query = rest.partition("?")
    if "@" in head:
        userinfo, _, host = head.rpartition("@")
        user, colon, _secret = userinfo.partition(":")
        head = f"{user}:***@{host}" if colon else f"{userinfo}@{host}"
    if sep:
        query = _SECRET_PARAM.sub(lambda q: f"{q['name']}=***", query)
    return scheme + head + sep + query


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
