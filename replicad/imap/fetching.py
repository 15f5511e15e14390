"""FETCH data items for one message (RFC 3501 §6.4.5 / §7.4.2, RFC 3516
BINARY, RFC 7162 MODSEQ).

:func:`fetch_values` turns the items a client asked for into the
``(name, value)`` pairs of one ``* n FETCH (...)`` response.  What comes
from the index (FLAGS, UID, INTERNALDATE, RFC822.SIZE, MODSEQ) never reads
the message; the rest needs the raw bytes and, for ENVELOPE, BODYSTRUCTURE
and sections, the MIME tree (:func:`~replicad.imap.mimeparse.parse_message`),
which :class:`MessageBytes` builds once per message however many items
use it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from replicad.imap.bodystructure import body_structure
from replicad.imap.commands import (
    FetchAttribute,
    FetchBinary,
    FetchBinarySize,
    FetchBody,
    FetchItem,
    FetchSimple,
    Partial,
    Section,
)
from replicad.imap.envelope import envelope
from replicad.imap.internaldate import format_date_time
from replicad.imap.mailboxindex import MessageMeta
from replicad.imap.mimeparse import MimePart, parse_message
from replicad.imap.nested import render_imap_value
from replicad.imap.responses import Literal, Raw, Value, flag_list, render_value
from replicad.imap.sections import (
    SectionSpec,
    apply_partial,
    binary_size,
    fetch_binary,
    fetch_section,
)

_BODY_FREE = frozenset(
    {
        FetchAttribute.FLAGS,
        FetchAttribute.UID,
        FetchAttribute.INTERNALDATE,
        FetchAttribute.RFC822_SIZE,
        FetchAttribute.MODSEQ,
    }
)


_WHOLE = Section()


def needs_body(items: Sequence[FetchItem]) -> bool:
    """Whether answering ``items`` reads the message bytes."""
    return any(not (isinstance(i, FetchSimple) and i.attribute in _BODY_FREE) for i in items)


def sets_seen(items: Sequence[FetchItem]) -> bool:
    """Whether the items imply ``\\Seen`` (RFC 3501 §6.4.5: BODY[...] without
    .PEEK, RFC822 and RFC822.TEXT; RFC 3516 BINARY without .PEEK)."""
    for item in items:
        if isinstance(item, FetchBody | FetchBinary) and not item.peek:
            return True
        if isinstance(item, FetchSimple) and item.attribute in (
            FetchAttribute.RFC822,
            FetchAttribute.RFC822_TEXT,
        ):
            return True
    return False


@dataclass(slots=True)
class MessageBytes:
    """The raw message and, parsed on first use, its MIME tree."""

    raw: bytes
    _tree: MimePart | None = field(default=None, init=False)

    @property
    def tree(self) -> MimePart:
        if self._tree is None:
            self._tree = parse_message(self.raw)
        return self._tree


#: What :class:`UnparsedFetch` renders, by item: a small code (cheaper to
#: compare per message than enum members) and the item's response name.
_UNPARSED_CODES = {
    FetchAttribute.UID: (0, b"UID"),
    FetchAttribute.FLAGS: (1, b"FLAGS"),
    FetchAttribute.INTERNALDATE: (2, b"INTERNALDATE"),
    FetchAttribute.RFC822_SIZE: (3, b"RFC822.SIZE"),
    FetchAttribute.MODSEQ: (4, b"MODSEQ"),
}
_WHOLE_BODY = 5

#: Distinct days an :class:`UnparsedFetch` remembers the rendering of.
MAX_CACHED_DAYS = 4096


class UnparsedFetch:
    """Renders whole ``* n FETCH (...)`` lines for the items that need no
    MIME parse: what the index answers (UID, FLAGS, INTERNALDATE,
    RFC822.SIZE, MODSEQ) and the whole message (``BODY.PEEK[]``), byte for
    byte what :func:`fetch_values` and
    :func:`~replicad.imap.responses.render_fetch` give, without a value tree
    per message and with the message copied once: a client syncing or
    downloading a mailbox asks exactly this of every message.  Each distinct
    flag list and each distinct day of an INTERNALDATE is rendered once.
    """

    def __init__(
        self, items: Sequence[FetchItem], *, with_uid: bool, with_modseq: bool
    ) -> None:
        slots: list[tuple[int, bytes]] = [_UNPARSED_CODES[FetchAttribute.UID]] if with_uid else []
        for item in items:
            if isinstance(item, FetchSimple):
                slot = _UNPARSED_CODES[item.attribute]
            else:
                assert _is_whole_peek(item)
                slot = (_WHOLE_BODY, b"BODY[]")
            if slot not in slots:
                slots.append(slot)
        if with_modseq and _UNPARSED_CODES[FetchAttribute.MODSEQ] not in slots:
            slots.append(_UNPARSED_CODES[FetchAttribute.MODSEQ])
        # Each name with the space before it (none before the first).
        self._slots = tuple(
            (code, (b" " if n else b"") + name + b" ") for n, (code, name) in enumerate(slots)
        )
        #: Whether the lines carry the message itself.
        self.needs_body = any(code == _WHOLE_BODY for code, _ in slots)
        self._flags: dict[tuple[str, ...], bytes] = {}
        self._days: dict[int, bytes] = {}

    @staticmethod
    def answers(items: Sequence[FetchItem]) -> bool:
        """Whether every item is one this class renders (none sets ``\\Seen``)."""
        return all(
            (isinstance(i, FetchSimple) and i.attribute in _BODY_FREE) or _is_whole_peek(i)
            for i in items
        )

    def render(
        self, seq: int, info: MessageMeta, flags: tuple[str, ...], raw: bytes | None
    ) -> bytes:
        """The FETCH line of message ``seq``; ``flags`` as the session reports
        them; ``raw`` the message when :attr:`needs_body`."""
        return b"".join(self.render_parts(seq, info, flags, raw))

    def render_parts(
        self, seq: int, info: MessageMeta, flags: tuple[str, ...], raw: bytes | None
    ) -> list[bytes]:
        """:meth:`render` in pieces whose concatenation is the line: the
        message itself is one piece, so that sending the pieces one after
        the other copies it once, into the connection's buffer, not twice."""
        parts: list[bytes] = []
        out = [b"* %d FETCH (" % seq]
        for code, name in self._slots:
            out.append(name)
            if code == 0:
                out.append(b"%d" % info.uid)
            elif code == 1:
                rendered = self._flags.get(flags)
                if rendered is None:
                    rendered = self._flags[flags] = render_value(flag_list(flags))
                out.append(rendered)
            elif code == 2:
                out.append(self._date_time(info.internaldate))
            elif code == 3:
                out.append(b"%d" % info.size)
            elif code == 4:
                out.append(b"(%d)" % info.modseq)
            elif raw:
                out.append(b"{%d}\r\n" % len(raw))
                head = b"".join(out)
                out.clear()
                parts.extend((head, raw))
            else:
                out.append(b'""')
        out.append(b")\r\n")
        parts.append(b"".join(out))
        return parts

    def _date_time(self, seconds: int) -> bytes:
        """:func:`internaldate_value`, with the date part of each day made once."""
        days, rest = divmod(seconds, 86400)
        day = self._days.get(days)
        if day is None:
            if len(self._days) >= MAX_CACHED_DAYS:
                self._days.clear()
            day = self._days[days] = internaldate_value(days * 86400)[:12]
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        return b"%s %02d:%02d:%02d +0000\"" % (day, hours, minutes, secs)


def _is_whole_peek(item: FetchItem) -> bool:
    return (
        isinstance(item, FetchBody)
        and item.peek
        and item.section == _WHOLE
        and item.partial is None
    )


def internaldate_value(seconds: int) -> bytes:
    """INTERNALDATE as a quoted ``date-time`` (kept in UTC by the store)."""
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return b'"' + format_date_time(when) + b'"'


def fetch_values(
    items: Sequence[FetchItem],
    info: MessageMeta,
    flags: tuple[str, ...],
    message: MessageBytes | None,
    *,
    with_uid: bool,
    with_modseq: bool,
    seen_now: bool = False,
) -> list[tuple[str, Value]]:
    """The response items for one message, in the order asked.

    ``flags`` are the flags the session reports (its own view).  ``with_uid``
    adds UID for UID FETCH (RFC 3501 §6.4.8); ``with_modseq`` adds MODSEQ
    once CONDSTORE is on and CHANGEDSINCE was given (RFC 7162 §3.1.4.1).
    ``seen_now`` says this FETCH has just set ``\\Seen`` on the message (a
    BODY[] or RFC822 item without .PEEK): the changed flags are then part
    of the answer (RFC 3501 §6.4.5 "SHOULD be included"), as Dovecot does,
    even when FLAGS was not asked for.
    Raises :class:`~replicad.imap.sections.UnknownTransferEncodingError` for
    BINARY of a part whose encoding cannot be undone.
    """
    out: list[tuple[str, Value]] = []
    names: set[str] = set()

    def add(name: str, value: Value) -> None:
        if name not in names:
            names.add(name)
            out.append((name, value))

    if with_uid:
        add("UID", info.uid)
    for item in items:
        if isinstance(item, FetchSimple):
            _simple(item.attribute, info, flags, message, add)
        elif isinstance(item, FetchBody):
            assert message is not None
            if item.section == _WHOLE:
                # BODY[] is the stored bytes: no MIME parse (a client
                # downloading a mailbox asks for nothing else).
                data = apply_partial(message.raw, _range(item.partial))
            else:
                data = fetch_section(
                    message.raw, message.tree, section_spec(item.section), _range(item.partial)
                )
            add(item.response_name(), Literal(data) if data else b"")
        elif isinstance(item, FetchBinary):
            assert message is not None
            data = fetch_binary(message.raw, message.tree, item.part, _range(item.partial))
            add(item.response_name(), Literal(data, binary=b"\0" in data) if data else b"")
        elif isinstance(item, FetchBinarySize):
            assert message is not None
            add(item.response_name(), binary_size(message.raw, message.tree, item.part))
    if seen_now:
        add("FLAGS", flag_list(flags))
    if with_modseq:
        add("MODSEQ", (info.modseq,))
    return out


def _simple(
    attribute: FetchAttribute,
    info: MessageMeta,
    flags: tuple[str, ...],
    message: MessageBytes | None,
    add: Callable[[str, Value], None],
) -> None:
    if attribute is FetchAttribute.FLAGS:
        add("FLAGS", flag_list(flags))
    elif attribute is FetchAttribute.UID:
        add("UID", info.uid)
    elif attribute is FetchAttribute.INTERNALDATE:
        add("INTERNALDATE", Raw(internaldate_value(info.internaldate)))
    elif attribute is FetchAttribute.RFC822_SIZE:
        add("RFC822.SIZE", info.size)
    elif attribute is FetchAttribute.MODSEQ:
        add("MODSEQ", (info.modseq,))
    else:
        assert message is not None
        if attribute is FetchAttribute.ENVELOPE:
            add("ENVELOPE", Raw(render_imap_value(envelope(message.tree))))
        elif attribute is FetchAttribute.BODYSTRUCTURE:
            add("BODYSTRUCTURE", Raw(render_imap_value(body_structure(message.tree))))
        elif attribute is FetchAttribute.BODY:
            structure = body_structure(message.tree, extended=False)
            add("BODY", Raw(render_imap_value(structure)))
        elif attribute is FetchAttribute.RFC822:
            add("RFC822", Literal(message.raw))
        elif attribute is FetchAttribute.RFC822_HEADER:
            header = message.raw[: message.tree.header_end]
            add("RFC822.HEADER", Literal(header))
        elif attribute is FetchAttribute.RFC822_TEXT:
            add("RFC822.TEXT", Literal(message.raw[message.tree.body_start :]))


def section_spec(section: Section) -> SectionSpec:
    """The parser's section record as the MIME layer's spec."""
    kind = "" if section.text is None else section.text.value
    assert kind in ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")
    return SectionSpec(
        section.part,
        kind,  # type: ignore[arg-type]
        tuple(f.encode("utf-8") for f in section.fields),
    )


def _range(partial: Partial | None) -> tuple[int, int] | None:
    return None if partial is None else (partial.start, partial.count)

