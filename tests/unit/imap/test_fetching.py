"""FETCH data items of one message (RFC 3501 §6.4.5, §7.4.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.imap.commands import FetchAttribute, FetchBody, FetchSimple, Partial, Section
from replicad.imap.fetching import MessageBytes, UnparsedFetch, fetch_values
from replicad.imap.mailboxindex import MessageMeta
from replicad.imap.responses import Atom, Literal, render_fetch
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


_METADATA = [
    FetchAttribute.UID,
    FetchAttribute.FLAGS,
    FetchAttribute.INTERNALDATE,
    FetchAttribute.RFC822_SIZE,
    FetchAttribute.MODSEQ,
]


@settings(max_examples=200, deadline=None)
@given(
    attributes=st.lists(st.sampled_from(_METADATA), min_size=1, max_size=6),
    with_uid=st.booleans(),
    with_modseq=st.booleans(),
    seq=st.integers(1, 2**32 - 1),
    uid=st.integers(1, 2**32 - 1),
    modseq=st.integers(1, 2**63 - 1),
    flags=st.sampled_from([(), ("\\Seen",), ("$Junk", "\\Flagged", "\\Recent")]),
    # Dates from 1900 to 2200, before and after the epoch.
    date=st.integers(-2208988800, 7258118400),
    size=st.integers(0, 2**40),
)
def test_the_metadata_fast_path_renders_what_the_general_path_renders(
    attributes: list[FetchAttribute],
    with_uid: bool,
    with_modseq: bool,
    seq: int,
    uid: int,
    modseq: int,
    flags: tuple[str, ...],
    date: int,
    size: int,
) -> None:
    items = [FetchSimple(a) for a in attributes]
    assert UnparsedFetch.answers(items)
    info = MessageInfo(uid, bytes(16), modseq, flags, date, size, bytes(32))
    general = render_fetch(
        seq, fetch_values(items, info, flags, None, with_uid=with_uid, with_modseq=with_modseq)
    )
    fast = UnparsedFetch(items, with_uid=with_uid, with_modseq=with_modseq)
    meta = MessageMeta(uid, modseq, flags, date, size)
    assert not fast.needs_body
    assert fast.render(seq, meta, flags, None) == general
    assert fast.render(seq, meta, flags, None) == general  # from its caches


@pytest.mark.parametrize("raw", [b"Subject: x\r\n\r\nbody\r\n", b""])
@pytest.mark.parametrize("with_modseq", [False, True])
def test_the_whole_message_renders_as_the_general_path_does(raw: bytes, with_modseq: bool) -> None:
    whole = FetchBody(Section(), peek=True)
    items = [FetchSimple(FetchAttribute.FLAGS), whole, FetchSimple(FetchAttribute.UID), whole]
    assert UnparsedFetch.answers(items)
    info = MessageInfo(7, bytes(16), 9, ("\\Seen",), 0, len(raw), bytes(32))
    general = render_fetch(
        3,
        fetch_values(
            items, info, info.flags, MessageBytes(raw), with_uid=True, with_modseq=with_modseq
        ),
    )
    fast = UnparsedFetch(items, with_uid=True, with_modseq=with_modseq)
    assert fast.needs_body
    meta = MessageMeta(7, 9, ("\\Seen",), 0, len(raw))
    assert fast.render(3, meta, meta.flags, raw) == general
    parts = fast.render_parts(3, meta, meta.flags, raw)
    assert b"".join(parts) == general
    # The message is a piece of its own, not copied into a larger one.
    assert any(part is raw for part in parts) == bool(raw)


def test_items_that_parse_or_set_seen_take_the_general_path() -> None:
    assert not UnparsedFetch.answers([FetchSimple(FetchAttribute.UID), FetchBody(Section())])
    assert not UnparsedFetch.answers([FetchBody(Section(), Partial(0, 10), peek=True)])
    assert not UnparsedFetch.answers([FetchSimple(FetchAttribute.RFC822)])
    assert not UnparsedFetch.answers([FetchSimple(FetchAttribute.ENVELOPE)])
