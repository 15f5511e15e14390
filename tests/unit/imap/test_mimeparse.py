"""The MIME tree's offsets: fixed cases, malformed input, and random trees made by ``email``."""

from __future__ import annotations

import email
import email.policy
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.imap.mimeparse import MAX_NESTING_DEPTH, MimePart, parse_message

from .conftest import message


def test_preamble_and_epilogue_belong_to_the_multipart_only() -> None:
    raw = message("alternative")
    root = parse_message(raw)
    body = raw[root.body_start:root.body_end]
    assert body.startswith(b"This is the preamble.\r\n--b1\r\n")
    assert body.endswith(b"--b1--\r\nThis is the epilogue.\r\n")
    first, second = root.children
    assert raw[first.body_start:first.body_end] == b"Caf=C3=A9 au lait"
    assert raw[second.header_start:second.header_end].startswith(b"Content-Type: text/html")


def test_outer_boundary_ends_an_inner_multipart_without_close() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=out\r\n\r\n"
        b"--out\r\nContent-Type: multipart/mixed; boundary=in\r\n\r\n"
        b"--in\r\n\r\ninner\r\n"
        b"--out\r\n\r\nsecond\r\n--out--\r\n"
    )
    root = parse_message(raw)
    inner, second = root.children
    assert [raw[p.body_start:p.body_end] for p in inner.children] == [b"inner"]
    assert raw[second.body_start:second.body_end] == b"second"


def test_longest_live_boundary_wins() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=ab\r\n\r\n"
        b"--ab\r\nContent-Type: multipart/mixed; boundary=abc\r\n\r\n"
        b"--abc\r\n\r\nx\r\n--abc--\r\n--ab--\r\n"
    )
    root = parse_message(raw)
    (inner,) = root.children
    assert [raw[p.body_start:p.body_end] for p in inner.children] == [b"x"]


def test_header_without_body_and_empty_message() -> None:
    assert parse_message(b"").body_size == 0
    root = parse_message(b"Subject: only a header")
    assert root.header_size == len(b"Subject: only a header") and root.body_size == 0
    assert root.header_value(b"SUBJECT") == b"only a header"


def test_folded_field_value_is_unfolded() -> None:
    root = parse_message(b"Subject: a\r\n  b\r\n\tc  \r\n\r\n")
    assert root.header_value(b"subject") == b"a  b\tc  "


def test_deep_nesting_stops_at_the_bound() -> None:
    depth = MAX_NESTING_DEPTH + 20
    raw = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"end\r\n"
    root = parse_message(raw)
    assert len(root.walk()) == MAX_NESTING_DEPTH + 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_invariants(raw, parse_message(raw))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"\r\n", b"--b\r\n", b"--b--\r\n",
    b"Content-Type: message/rfc822\r\n", b"text\r\n", b"--b", b"\n", b"Content-Type: x\n",
]), max_size=30))
def test_boundary_soup_never_raises(lines: list[bytes]) -> None:
    raw = b"".join(lines)
    check_invariants(raw, parse_message(raw))


def check_invariants(raw: bytes, part: MimePart) -> None:
    """Offsets ordered and nested: children inside their parent's body, in order."""
    assert 0 <= part.header_start <= part.body_start <= part.body_end <= len(raw)
    assert part.body_lines == raw.count(b"\n", part.body_start, part.body_end)
    previous_end = part.body_start
    for child in part.children:
        assert part.body_start <= child.header_start and child.body_end <= part.body_end
        assert child.header_start >= previous_end
        previous_end = child.body_end
        check_invariants(raw, child)
    if part.message is not None:
        assert part.message.header_start == part.body_start
        assert part.message.body_end == part.body_end
        check_invariants(raw, part.message)


# -- random MIME trees built with the email package ---------------------------

_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=60)


def _safe_text(body: str, subtype: str, charset: str) -> MIMEText:
    if charset == "us-ascii":
        body = body.encode("ascii", "replace").decode("ascii")
    return MIMEText(body, subtype, charset)


def trees() -> st.SearchStrategy[Message]:
    leaf = st.one_of(
        st.builds(_safe_text, _TEXT, st.sampled_from(["plain", "html"]),
                  st.sampled_from(["utf-8", "us-ascii"])),
        st.builds(lambda data: MIMEApplication(data, "octet-stream"), st.binary(max_size=200)),
    )

    def multipart(children: list[Message], subtype: str) -> Message:
        outer = MIMEMultipart(subtype)
        for child in children:
            outer.attach(child)
        return outer

    def attached(inner: Message) -> Message:
        return MIMEMessage(inner)

    return st.recursive(
        leaf,
        lambda sub: st.one_of(
            st.builds(multipart, st.lists(sub, min_size=1, max_size=3),
                      st.sampled_from(["mixed", "alternative"])),
            st.builds(attached, sub),
        ),
        max_leaves=6,
    )


def compare(raw: bytes, mine: MimePart, theirs: Message) -> None:
    """One part of my tree against the email package's: same type, and the
    entity my offsets cut out re-parses to the same payload."""
    assert mine.content_type.maintype_lower.decode() == theirs.get_content_maintype()
    assert mine.content_type.subtype_lower.decode() == theirs.get_content_subtype()
    entity = email.message_from_bytes(raw[mine.header_start:mine.body_end])
    assert entity.get_content_type() == theirs.get_content_type()
    if theirs.is_multipart() and not isinstance(theirs, MIMEMessage):
        assert len(mine.children) == len(theirs.get_payload())
        for my_child, their_child in zip(mine.children, theirs.get_payload(), strict=True):
            compare(raw, my_child, their_child)
    elif isinstance(theirs, MIMEMessage) or theirs.get_content_type() == "message/rfc822":
        assert mine.message is not None
        compare(raw, mine.message, theirs.get_payload(0))
    else:
        assert isinstance(theirs, MIMEBase)
        want = theirs.get_payload(decode=True).replace(b"\r\n", b"\n")
        got = entity.get_payload(decode=True).replace(b"\r\n", b"\n")
        assert got == want
        assert mine.body_size == mine.body_end - mine.body_start
        assert mine.body_lines == raw[mine.body_start:mine.body_end].count(b"\n")


@settings(max_examples=150, deadline=None)
@given(trees(), st.sampled_from(["\r\n", "\n"]))
def test_offsets_slice_every_part_of_random_trees(tree: Message, linesep: str) -> None:
    raw = tree.as_bytes(policy=email.policy.compat32.clone(linesep=linesep))
    root = parse_message(raw)
    check_invariants(raw, root)
    compare(raw, root, tree)
