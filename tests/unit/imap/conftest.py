"""Helpers for the IMAP wire tests: drive a parser as the session glue would."""

from __future__ import annotations

from replicad.imap.parser import CommandParser, NeedContinuation, NeedData, ParseEvent


def drain(parser: CommandParser) -> list[ParseEvent]:
    """Every event the fed octets produce, up to (not including) NeedData."""
    events: list[ParseEvent] = []
    while True:
        event = parser.next_event()
        if isinstance(event, NeedData):
            return events
        events.append(event)


def parse_all(data: bytes, parser: CommandParser | None = None) -> list[ParseEvent]:
    """Feed ``data`` at once; continuations are granted and left out of the result."""
    parser = parser or CommandParser()
    parser.feed(data)
    return [e for e in drain(parser) if not isinstance(e, NeedContinuation)]


def parse_one(line: bytes) -> ParseEvent:
    """The single event of one command (CRLF appended)."""
    events = parse_all(line + b"\r\n")
    assert len(events) == 1, events
    return events[0]
