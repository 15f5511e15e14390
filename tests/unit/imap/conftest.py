"""Shared helpers of the IMAP unit tests.

Wire tests drive a parser as the session glue would.  Message-structure
tests use the corpus ``messages/*.eml`` and ``golden/*.golden``, what
Dovecot 2.3 answered for each FETCH item on it, recorded by
``tools/interop/dovecot_goldens`` (rerun it after adding a message).
"""

from __future__ import annotations

import re
from pathlib import Path

from replicad.imap.nested import render_imap_value
from replicad.imap.parser import CommandParser, NeedContinuation, NeedData, ParseEvent

HERE = Path(__file__).resolve().parent
MESSAGES = HERE / "messages"
GOLDEN = HERE / "golden"

CORPUS = sorted(path.stem for path in MESSAGES.glob("*.eml"))

# Deliberate difference from Dovecot, for every item of these messages:
# replicad counts and returns the bytes as stored, while Dovecot presents a
# bare LF as CRLF.  Their goldens are compared with the message converted to
# CRLF (same structure, same answers), and the raw counts are checked apart.
BARE_LF_MESSAGES = frozenset({"lf_only"})


def message(stem: str) -> bytes:
    return (MESSAGES / f"{stem}.eml").read_bytes()


def comparable_message(stem: str) -> bytes:
    """The message as Dovecot presented it to its clients."""
    raw = message(stem)
    if stem in BARE_LF_MESSAGES:
        return raw.replace(b"\n", b"\r\n")
    return raw


def golden(stem: str) -> dict[str, bytes]:
    """Item -> Dovecot's FETCH data for it (item name included), or b"!" + its refusal."""
    data = (GOLDEN / f"{stem}.golden").read_bytes()
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        item, length = data[pos + 3 : newline].rsplit(b" ", 1)
        start = newline + 1
        out[item.decode()] = data[start : start + int(length)]
        pos = start + int(length) + 1
    return out


_LITERAL = re.compile(rb"~?\{(\d+)\}\r\n")


def normalise_strings(value: bytes) -> bytes:
    """Dovecot's rendering with every string re-rendered by
    :func:`render_imap_value`: Dovecot sends some quotable strings as
    literals (a value that held a folding CRLF, one with a ``"``), which is
    the renderer's choice, not the structure's."""
    out = bytearray()
    pos = 0
    while pos < len(value):
        literal = _LITERAL.match(value, pos)
        if literal is not None:
            end = literal.end() + int(literal.group(1))
            out += render_imap_value(value[literal.end() : end])
            pos = end
        elif value[pos] == 0x22:
            text = bytearray()
            pos += 1
            while value[pos] != 0x22:
                if value[pos] == 0x5C:
                    pos += 1
                text.append(value[pos])
                pos += 1
            out += render_imap_value(bytes(text))
            pos += 1
        else:
            out.append(value[pos])
            pos += 1
    return bytes(out)


def golden_value(stem: str, item: str) -> bytes:
    """Dovecot's value for a structure item (ENVELOPE, BODY, BODYSTRUCTURE), normalised."""
    answer = golden(stem)[item]
    assert answer.startswith(item.encode() + b" ")
    return normalise_strings(answer[len(item) + 1 :])


def golden_literal(stem: str, item: str) -> bytes:
    """The bytes of Dovecot's literal answer to a section item."""
    answer = golden(stem)[item]
    literal = _LITERAL.search(answer)
    assert literal is not None, answer
    content = answer[literal.end() :]
    assert len(content) == int(literal.group(1))
    return content


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
