"""URLs made safe to print: every credential redis-py would read from a Redis URL masked."""

from __future__ import annotations

import re

__all__ = ["mask_url"]

_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>.*)$", re.DOTALL)
#: Query parameters that carry a credential (redis-py passes any query parameter to the connection).
_SECRET_PARAM = re.compile(
    r"(?P<name>[^&=?#]*(?:pass|pwd|secret|token|key|auth)[^&=#]*)=(?P<value>[^&#]*)", re.I
)


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
