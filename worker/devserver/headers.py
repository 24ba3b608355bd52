"""Request headers Micromegas reads, and the bearer-token check, as a Flight server middleware.

Headers (names arrive lower-case): ``authorization: Bearer <token>``; ``query_range_begin`` and
``query_range_end`` (RFC 3339, both or the range is ignored, as upstream); ``preserve_dictionary:
true``; ``limit: n``.
"""

from __future__ import annotations

import calendar
import hmac
import re
from dataclasses import dataclass
from typing import Any

import pyarrow.flight as fl

__all__ = ["MIDDLEWARE_KEY", "HeaderMiddlewareFactory", "RequestHeaders", "parse_rfc3339_ns"]

MIDDLEWARE_KEY = "devserver"

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339_ns(text: str) -> int:
    """RFC 3339 text to epoch nanoseconds, keeping all nine fractional digits.

    Raises:
        ValueError: not an RFC 3339 timestamp.
    """
    m = _RFC3339.match(text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = int((m.group(7) or "").ljust(9, "0"))
    zone = m.group(8)
    offset = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + frac


@dataclass(frozen=True)
class RequestHeaders:
    """What one call asked for through its headers."""

    range_ns: tuple[int, int] | None = None
    preserve_dictionary: bool = False
    limit: int | None = None

    @classmethod
    def parse(cls, headers: dict[str, list[str]]) -> RequestHeaders:
        def first(name: str) -> str | None:
            values = headers.get(name)
            if not values:
                return None
            value = values[0]
            return value.decode() if isinstance(value, bytes) else value

        begin, end = first("query_range_begin"), first("query_range_end")
        range_ns = None
        if begin is not None and end is not None:
            try:
                range_ns = (parse_rfc3339_ns(begin), parse_rfc3339_ns(end))
            except ValueError as exc:
                raise ValueError(f"invalid query range header: {exc}") from exc
        limit_text = first("limit")
        limit = None
        if limit_text is not None:
            try:
                limit = int(limit_text)
            except ValueError as exc:
                raise ValueError(f"invalid limit header: {limit_text!r}") from exc
        return cls(
            range_ns=range_ns,
            preserve_dictionary=(first("preserve_dictionary") or "").lower() == "true",
            limit=limit,
        )


class HeaderMiddleware(fl.ServerMiddleware):  # type: ignore[misc]
    """Carries the parsed headers of one call to the handler."""

    def __init__(self, headers: RequestHeaders) -> None:
        self.headers = headers


class HeaderMiddlewareFactory(fl.ServerMiddlewareFactory):  # type: ignore[misc]
    """Checks the bearer token (when one is configured) and parses the headers of every call."""

    def __init__(self, token: str | None) -> None:
        super().__init__()
        self._expected = None if token is None else f"Bearer {token}".encode()

    def start_call(self, info: Any, headers: dict[str, list[Any]]) -> HeaderMiddleware:
        if self._expected is not None:
            given = (headers.get("authorization") or [""])[0]
            given_bytes = given.encode() if isinstance(given, str) else bytes(given)
            if not hmac.compare_digest(given_bytes, self._expected):
                raise fl.FlightUnauthenticatedError("invalid or missing bearer token")
        return HeaderMiddleware(RequestHeaders.parse(headers))
