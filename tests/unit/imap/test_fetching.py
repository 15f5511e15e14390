"""FETCH data items of one message (RFC 3501 §6.4.5, §7.4.2)."""

from __future__ import annotations

from replicad.imap.commands import FetchAttribute, FetchBody, FetchSimple, Section
from replicad.imap.fetching import MessageBytes, fetch_values
from replicad.imap.responses import Atom, Literal
from replicad.store.records import MessageInfo

RAW = b"Subject: s\r\n\r\nbody\r\n"
INFO = MessageInfo(
    uid=7, guid=bytes(16), modseq=3, flags=("\\Seen",), internaldate=0, size=len(RAW),
    body_hash=bytes(32),
)
BODY = FetchBody(Section(), None, peek=False)


def test_flags_set_by_the_fetch_itself_are_reported() -> None:
    values = fetch_values(
        [BODY], INFO, INFO.flags, MessageBytes(RAW), with_uid=False, with_modseq=False,
        seen_now=True,
    )
    assert values == [("BODY[]", Literal(RAW)), ("FLAGS", (Atom("\\Seen"),))]


def test_flags_not_repeated_nor_added_unasked() -> None:
    items = [FetchSimple(FetchAttribute.FLAGS), BODY]
    values = fetch_values(
        items, INFO, INFO.flags, MessageBytes(RAW), with_uid=False, with_modseq=False,
        seen_now=True,
    )
    assert [name for name, _ in values] == ["FLAGS", "BODY[]"]
    values = fetch_values(
        [BODY], INFO, INFO.flags, MessageBytes(RAW), with_uid=False, with_modseq=False
    )
    assert [name for name, _ in values] == ["BODY[]"]
