"""One-line ``key=value`` log events for the link layer.

Operators grep and ship these lines, so each event is one line whose first
field is ``event=NAME``; values with spaces, quotes or ``=`` are quoted, and
control characters (which a hostile peer could put in a HELLO to forge log
lines) are escaped. Callers never pass key material.
"""

from __future__ import annotations

import logging

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:/[]@+,")


def format_value(value: object) -> str:
    text = str(value)
    if text and all(ch in _PLAIN for ch in text):
        return text
    # unicode_escape turns backslashes, control and non-ASCII characters into
    # escapes; quotes are the one thing it leaves alone.
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}"'


def format_event(event: str, **fields: object) -> str:
    """``event=NAME k1=v1 k2="v 2"``; fields whose value is None are left out."""
    parts = [f"event={event}"]
    parts.extend(
        f"{key}={format_value(value)}" for key, value in fields.items() if value is not None
    )
    return " ".join(parts)


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """Log one event line; ``event`` and the fields are also on the record as
    ``record.event`` and ``record.fields`` for structured handlers and tests."""
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "%s",
            format_event(event, **fields),
            extra={"event": event, "fields": {k: v for k, v in fields.items() if v is not None}},
        )
