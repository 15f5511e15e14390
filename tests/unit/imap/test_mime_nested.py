"""The neutral value model's minimal renderer (RFC 3501 §4, §9)."""

from __future__ import annotations

import pytest

from replicad.imap.nested import MAX_QUOTED_BYTES, Adjacent, render_imap_value


def test_atoms_numbers_and_lists() -> None:
    assert render_imap_value(None) == b"NIL"
    assert render_imap_value(0) == b"0"
    assert render_imap_value([b"a", None, [1, 2], []]) == b'("a" NIL (1 2) ())'


def test_quoted_escapes_quote_and_backslash() -> None:
    assert render_imap_value(b'say "hi" \\ bye') == b'"say \\"hi\\" \\\\ bye"'
    assert render_imap_value(b"") == b'""'


@pytest.mark.parametrize(
    "value", [b"a\r\nb", b"a\nb", b"nul\x00", b"caf\xc3\xa9", b"x" * (MAX_QUOTED_BYTES + 1)]
)
def test_unsafe_strings_become_literals(value: bytes) -> None:
    assert render_imap_value(value) == b"{%d}\r\n" % len(value) + value


def test_longest_quoted_string() -> None:
    value = b"x" * MAX_QUOTED_BYTES
    assert render_imap_value(value) == b'"' + value + b'"'


def test_adjacent_items_have_no_separator() -> None:
    value = [Adjacent(([b"a"], [b"b"])), b"mixed"]
    assert render_imap_value(value) == b'(("a")("b") "mixed")'


def test_booleans_are_refused() -> None:
    with pytest.raises(TypeError):
        render_imap_value(True)
