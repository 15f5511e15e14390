"""BODY[section]<partial>, BINARY and BINARY.SIZE against Dovecot's answers."""

from __future__ import annotations

import re

import pytest

from replicad.imap.mimeparse import parse_message
from replicad.imap.sections import (
    SectionSpec,
    UnknownTransferEncodingError,
    binary_size,
    decode_quoted_printable,
    decode_transfer_encoding,
    fetch_binary,
    fetch_section,
    find_part,
)

from .conftest import CORPUS, comparable_message, golden, golden_literal, message

_ITEM = re.compile(r"(BODY\.PEEK|BINARY\.PEEK|BINARY\.SIZE)\[([^\]]*)\](?:<(\d+)\.(\d+)>)?$")


def parse_item(item: str) -> tuple[str, SectionSpec, tuple[int, int] | None]:
    """The golden file's FETCH item as (fetch kind, section, partial)."""
    match = _ITEM.match(item)
    assert match is not None, item
    kind, section, start, count = match.groups()
    numbers: list[int] = []
    while section[:1].isdigit():
        number, _, section = section.partition(".")
        numbers.append(int(number))
    fields: tuple[bytes, ...] = ()
    if section.startswith("HEADER.FIELDS"):
        section, _, names = section.partition(" ")
        fields = tuple(name.encode() for name in names.strip("()").split())
    spec = SectionSpec(tuple(numbers), section, fields)  # type: ignore[arg-type]
    return kind, spec, (int(start), int(count)) if start else None


SECTION_CASES = [
    (stem, item)
    for stem in CORPUS
    for item in golden(stem)
    if item.startswith(("BODY.PEEK[", "BINARY"))
]


@pytest.mark.parametrize(("stem", "item"), SECTION_CASES)
def test_section_matches_dovecot(stem: str, item: str) -> None:
    raw = comparable_message(stem)
    root = parse_message(raw)
    kind, spec, partial = parse_item(item)
    answer = golden(stem)[item]
    if answer.startswith(b"!"):
        assert answer.startswith(b"!NO [UNKNOWN-CTE]")
        with pytest.raises(UnknownTransferEncodingError):
            fetch_binary(raw, root, spec.part, partial)
        return
    if kind == "BINARY.SIZE":
        assert binary_size(raw, root, spec.part) == int(answer.rsplit(b" ", 1)[1])
    elif kind == "BINARY.PEEK":
        assert fetch_binary(raw, root, spec.part, partial) == golden_literal(stem, item)
    else:
        assert fetch_section(raw, root, spec, partial) == golden_literal(stem, item)


def test_bare_lf_sections_are_the_stored_bytes() -> None:
    raw = message("lf_only")
    root = parse_message(raw)
    assert fetch_section(raw, root, SectionSpec((1,))) == b"line one\nline two"
    fields = fetch_section(raw, root, SectionSpec((), "HEADER.FIELDS", (b"subject",)))
    assert fields == b"Subject: LF only\n\n"


def test_whole_message_and_partials() -> None:
    raw = message("simple")
    root = parse_message(raw)
    assert fetch_section(raw, root, SectionSpec()) == raw
    assert fetch_section(raw, root, SectionSpec(), (0, 4)) == b"Date"
    assert fetch_section(raw, root, SectionSpec(), (len(raw) + 5, 10)) == b""


def test_part_numbers_inside_an_attached_message() -> None:
    raw = message("nested_rfc822")
    root = parse_message(raw)
    html = find_part(root, (2, 2))
    assert html is not None and html.content_type.subtype == b"html"
    assert find_part(root, (2, 3)) is None
    assert find_part(root, (0,)) is None
    text = fetch_section(raw, root, SectionSpec((2,), "TEXT"))
    assert text.startswith(b"--inner\r\n") and text.endswith(b"--inner--\r\n")


def test_decoding_of_transfer_encodings() -> None:
    assert decode_transfer_encoding(b"aGVs\r\nbG8=\r\n", b"Base64") == b"hello"
    assert decode_transfer_encoding(b"aGVs!!bG8=", b"base64") == b"hello"
    assert decode_transfer_encoding(b"a=3Db=\r\nc", b"quoted-printable") == b"a=bc"
    assert decode_transfer_encoding(b"\xff raw", None) == b"\xff raw"
    with pytest.raises(UnknownTransferEncodingError) as caught:
        decode_transfer_encoding(b"x", b"x-uuencode")
    assert caught.value.encoding == b"x-uuencode"


# A top-level message/rfc822: its part 1 is its body (the attached message
# whole), and further numbers go into the attached message.
INNER = b"From: inner@example.org\r\nSubject: inner\r\n\r\nHello\r\n"
ATTACHED_ONCE = b"From: outer@example.org\r\nContent-Type: message/rfc822\r\n\r\n" + INNER
MIDDLE = b"From: middle@example.org\r\nContent-Type: message/rfc822\r\n\r\n" + INNER
ATTACHED_TWICE = b"From: outer@example.org\r\nContent-Type: Message/RFC822\r\n\r\n" + MIDDLE
DIGEST = (
    b"From: digest@example.org\r\nContent-Type: multipart/digest; boundary=\"d\"\r\n\r\n"
    b"prologue\r\n--d \r\n\r\nSubject: one\r\n\r\nbody one\r\n"
    b"--d\r\nX-Part: two\r\n\r\nSubject: two\r\n\r\nbody two\r\n--d--\r\n"
)
ATTACHED_DIGEST = b"From: outer@example.org\r\nContent-Type: message/rfc822\r\n\r\n" + DIGEST


@pytest.mark.parametrize(
    ("raw", "section", "expected"),
    [
        (ATTACHED_ONCE, SectionSpec((1,)), INNER),
        (ATTACHED_ONCE, SectionSpec((1,), "HEADER"), INNER[: INNER.index(b"\r\n\r\n") + 4]),
        (ATTACHED_ONCE, SectionSpec((1,), "TEXT"), b"Hello\r\n"),
        (ATTACHED_ONCE, SectionSpec((1, 1)), b"Hello\r\n"),
        (ATTACHED_ONCE, SectionSpec((1,), "HEADER.FIELDS", (b"subject",)),
         b"Subject: inner\r\n\r\n"),
        (ATTACHED_ONCE, SectionSpec((1, 1, 1)), b""),
        (ATTACHED_ONCE, SectionSpec((2,)), b""),
        (ATTACHED_TWICE, SectionSpec((1,)), MIDDLE),
        (ATTACHED_TWICE, SectionSpec((1, 1)), INNER),
        (ATTACHED_TWICE, SectionSpec((1,), "HEADER"), MIDDLE[: MIDDLE.index(b"\r\n\r\n") + 4]),
        (ATTACHED_TWICE, SectionSpec((1, 1), "HEADER"), INNER[: INNER.index(b"\r\n\r\n") + 4]),
        (ATTACHED_TWICE, SectionSpec((1, 1, 1)), b"Hello\r\n"),
        (ATTACHED_TWICE, SectionSpec((1, 1), "TEXT"), b"Hello\r\n"),
        (ATTACHED_DIGEST, SectionSpec((1,)), DIGEST),
        (ATTACHED_DIGEST, SectionSpec((1,), "TEXT"), DIGEST[DIGEST.index(b"prologue"):]),
        (ATTACHED_DIGEST, SectionSpec((1, 1)), b"Subject: one\r\n\r\nbody one"),
        (ATTACHED_DIGEST, SectionSpec((1, 1), "MIME"), b"\r\n"),
        (ATTACHED_DIGEST, SectionSpec((1, 1), "HEADER"), b"Subject: one\r\n\r\n"),
        (ATTACHED_DIGEST, SectionSpec((1, 1), "TEXT"), b"body one"),
        (ATTACHED_DIGEST, SectionSpec((1, 2), "MIME"), b"X-Part: two\r\n\r\n"),
        (ATTACHED_DIGEST, SectionSpec((1, 2), "TEXT"), b"body two"),
    ],
)
def test_sections_of_a_top_level_message_rfc822(
    raw: bytes, section: SectionSpec, expected: bytes
) -> None:
    assert fetch_section(raw, parse_message(raw), section) == expected


QP_BODY = (
    b"hello  \r\nbar=\r\n\r\nfoo\t=\r\nbar\r\nfoo\t \t= \r\n=62\r\nfoo = \t\r\nbar\r\n"
    b"foo =\r\n=62\r\nfoo  \r\nbar=\r\n\r\nfoo_bar\r\n"
)


def test_quoted_printable_drops_transport_padding_and_joins_soft_breaks() -> None:
    decoded = decode_quoted_printable(QP_BODY)
    assert decoded == (
        b"hello\r\nbar\r\nfoo\tbar\r\nfoo\t \tb\r\nfoo bar\r\nfoo b\r\nfoo\r\nbar\r\nfoo_bar\r\n"
    )
    assert decode_transfer_encoding(QP_BODY, b"Quoted-Printable") == decoded


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        (b"a=3db=3D", b"a=b="),  # hex digits of either case
        (b"100% =ZZ =4", b"100% =ZZ =4"),  # a stray '=' stays
        (b"line  \nnext\t\n", b"line\nnext\n"),  # bare LF kept
        (b"soft=", b"soft"),  # soft break at the very end
        (b"", b""),
    ],
)
def test_quoted_printable_cases(encoded: bytes, decoded: bytes) -> None:
    assert decode_quoted_printable(encoded) == decoded
