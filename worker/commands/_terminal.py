"""Untrusted text made safe for a terminal.

Status messages, labels, details, urls and the Flight SQL service's process names reach the
command line from Redis or the source, both writable by others. Printed raw, an escape sequence in
them could clear the screen, set the window title or hide text (ESC, CSI U+009B, bidirectional
overrides such as U+202E). :func:`safe` prints every character that is not printable
(:meth:`str.isprintable`: controls, format characters, separators other than space) as a
Python-style escape (``\\x1b``, ``\\u202e``), so what is shown is what is stored.
"""

from __future__ import annotations

__all__ = ["safe"]


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(value: object) -> str:
    """``str(value)`` with every non-printable character escaped (a backslash is doubled)."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join("\\\\" if ch == "\\" else (ch if ch.isprintable() else _escape(ch)) for ch in text)
