"""A literal8 APPEND's binary parts stored in base64 (RFC 3516 §4.4)."""

from __future__ import annotations

import base64

from replicad.imap.binaryparts import BASE64_LINE_CHARS, encode_binary_parts
from replicad.imap.mimeparse import parse_message
from replicad.imap.sections import SectionSpec, binary_size, fetch_binary, fetch_section

PAYLOAD = bytes(range(256)) * 2  # NUL, CR, LF and 8-bit octets, 512 of them

MULTIPART = (
    b"Subject: two parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nplain text\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\n"
    b"content-transfer-encoding:  BINARY \r\n\r\n" + PAYLOAD + b"\r\n--b--\r\n"
)


def test_a_binary_part_becomes_base64_and_binary_fetch_gives_it_back() -> None:
    stored = encode_binary_parts(MULTIPART)
    root = parse_message(stored)
    assert b"\0" not in stored
    mime = fetch_section(stored, root, SectionSpec((2,), "MIME"))
    assert mime == (
        b"Content-Type: application/octet-stream\r\ncontent-transfer-encoding: base64\r\n\r\n"
    )
    body = fetch_section(stored, root, SectionSpec((2,)))
    assert all(len(line) <= BASE64_LINE_CHARS for line in body.split(b"\r\n"))
    assert base64.b64decode(body.replace(b"\r\n", b"")) == PAYLOAD
    assert fetch_binary(stored, root, (2,)) == PAYLOAD
    assert binary_size(stored, root, (2,)) == len(PAYLOAD)
    # The other part and the structure around it are untouched.
    assert fetch_section(stored, root, SectionSpec((1,))) == b"plain text"
    assert stored.startswith(MULTIPART[: MULTIPART.index(b"content-transfer")])
    assert stored.endswith(b"\r\n--b--\r\n")


def test_a_single_part_message_keeps_its_final_line_end() -> None:
    raw = b"Content-Transfer-Encoding: binary\n\n\x00-\xe4\r\n"
    stored = encode_binary_parts(raw)
    assert stored == b"Content-Transfer-Encoding: base64\n\nAC3kDQo=\r\n"
    assert fetch_binary(stored, parse_message(stored), (1,)) == b"\x00-\xe4\r\n"


def test_messages_without_binary_parts_are_unchanged() -> None:
    for raw in (
        b"Subject: plain\r\n\r\n8bit \xe4 text\r\n",
        b"Content-Transfer-Encoding: 8bit\r\n\r\nx\r\n",
        # A multipart's own encoding is never re-encoded.
        b"Content-Type: multipart/mixed; boundary=b\r\nContent-Transfer-Encoding: binary\r\n"
        b"\r\n--b\r\n\r\nx\r\n--b--\r\n",
    ):
        assert encode_binary_parts(raw) is raw
