"""ENVELOPE (RFC 3501 §7.4.2, RFC 9051 §7.5.2) of a message's header.

The result is a value of the neutral model of :mod:`replicad.imap.nested`
(``None`` NIL, ``bytes`` strings, ``list`` parenthesised lists, ``Adjacent``
the address run inside an address list):

    (date subject from sender reply-to to cc bcc in-reply-to message-id)

Values are the header fields as stored, unfolded, white space after the
colon dropped: encoded-words (RFC 2047) and 8-bit octets are passed through
unchanged, which is what Dovecot sends (a client decodes them for display).
Sender and Reply-To default to From when absent or empty (RFC 3501 §7.4.2).

Address lists are read with a small RFC 5322 §3.4 tokenizer (the ``email``
package loses groups): each address is ``(name route mailbox host)``; a
group is ``(NIL NIL "name" NIL)`` before its members and ``(NIL NIL NIL NIL)``
after them; a display name is unquoted and its words joined by one space;
without one, a comment after the address gives the name.  As Dovecot does,
an address lacking its local part or its domain says ``MISSING_MAILBOX`` or
``MISSING_DOMAIN`` rather than being dropped, and an obsolete source route
(``<@a,@b:user@host>``) is kept as ``"@a,@b"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicad.imap.mimeparse import MimePart
from replicad.imap.nested import Adjacent, ImapValue

MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"

_SPECIALS = frozenset(b'()<>[]:;@\\,."')


@dataclass(frozen=True, slots=True)
class Address:
    """One ENVELOPE address.  A group start has only ``mailbox`` (the group
    name); a group end has nothing (every member None)."""

    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    host: bytes | None

    def to_value(self) -> ImapValue:
        return [self.name, self.route, self.mailbox, self.host]


_GROUP_END = Address(None, None, None, None)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word" (atom or quoted string), "comment", "literal" or "special"
    text: bytes


def _tokenize(value: bytes) -> list[_Token]:
    """RFC 5322 §3.2 lexical tokens of a structured header value."""
    tokens: list[_Token] = []
    pos = 0
    size = len(value)
    while pos < size:
        char = value[pos]
        if char in b" \t\r\n":
            pos += 1
        elif char == 0x22:  # quoted-string
            out = bytearray()
            pos += 1
            while pos < size and value[pos] != 0x22:
                if value[pos] == 0x5C and pos + 1 < size:
                    pos += 1
                out.append(value[pos])
                pos += 1
            tokens.append(_Token("word", bytes(out)))
            pos += 1
        elif char == 0x28:  # comment, nesting
            depth, out = 0, bytearray()
            while pos < size:
                char = value[pos]
                if char == 0x5C and pos + 1 < size:
                    out.append(value[pos + 1])
                    pos += 2
                    continue
                if char == 0x28:
                    depth += 1
                    if depth > 1:
                        out.append(char)
                elif char == 0x29:
                    depth -= 1
                    if depth == 0:
                        pos += 1
                        break
                    out.append(char)
                else:
                    out.append(char)
                pos += 1
            tokens.append(_Token("comment", bytes(out)))
        elif char == 0x5B:  # domain literal, kept with its brackets
            end = value.find(b"]", pos)
            end = size if end == -1 else end + 1
            tokens.append(_Token("literal", value[pos:end]))
            pos = end
        elif char in _SPECIALS:
            tokens.append(_Token("special", bytes([char])))
            pos += 1
        else:
            start = pos
            while pos < size and value[pos] not in _SPECIALS and value[pos] not in b" \t\r\n":
                pos += 1
            tokens.append(_Token("word", value[start:pos]))
    return tokens


class _AddressParser:
    """Recursive descent over the tokens of an address-list (RFC 5322 §3.4,
    with the obsolete forms of §4.4 that mail still carries)."""

    def __init__(self, value: bytes) -> None:
        self.tokens = _tokenize(value)
        self.pos = 0
        self.comment: bytes | None = None
        self.out: list[Address] = []

    def peek(self) -> _Token | None:
        """The next non-comment token; comments passed are remembered."""
        while self.pos < len(self.tokens) and self.tokens[self.pos].kind == "comment":
            self.comment = self.tokens[self.pos].text
            self.pos += 1
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def at_special(self, char: bytes) -> bool:
        token = self.peek()
        return token is not None and token.kind == "special" and token.text == char

    def parse(self) -> list[Address]:
        while self.peek() is not None:
            if self.at_special(b",") or self.at_special(b";"):
                self.pos += 1
                continue
            before = self.pos
            self.address()
            if self.pos == before:
                self.pos += 1  # a stray special: skipped, never loops
        return self.out

    def address(self) -> None:
        start = self.pos
        phrase = self.phrase()
        if self.at_special(b":") and phrase is not None:
            self.pos += 1
            self.group(phrase)
            return
        self.pos = start
        self.mailbox()

    def group(self, name: bytes) -> None:
        self.out.append(Address(None, None, name, None))
        while self.peek() is not None and not self.at_special(b";"):
            if self.at_special(b","):
                self.pos += 1
                continue
            before = self.pos
            self.mailbox()
            if self.pos == before:
                self.pos += 1
        if self.at_special(b";"):
            self.pos += 1
        self.out.append(_GROUP_END)

    def phrase(self) -> bytes | None:
        """Words (and obsolete dots) before ``<`` or ``:``; None when there are none."""
        words: list[bytes] = []
        while (token := self.peek()) is not None:
            if token.kind == "word":
                words.append(token.text)
            elif token.kind == "special" and token.text == b"." and words:
                words[-1] += b"."  # obs-phrase: "John Q. Public"
            else:
                break
            self.pos += 1
        return b" ".join(words) if words else None

    def mailbox(self) -> None:
        self.comment = None
        start = self.pos
        name = self.phrase()
        if self.at_special(b"<"):
            self.pos += 1
            route = self.route()
            local, domain = self.addr_spec()
            if self.at_special(b">"):
                self.pos += 1
            self.peek()  # a comment after ">" can still name the address
        else:
            self.pos = start
            name, route = None, None
            local, domain = self.addr_spec()
            self.peek()
            if self.pos == start:
                return
        if name is None:
            name = self.comment
        self.out.append(Address(name, route, local or MISSING_MAILBOX, domain or MISSING_DOMAIN))

    def route(self) -> bytes | None:
        """An obsolete source route ``@a,@b:`` (RFC 5322 §4.4), or None."""
        if not self.at_special(b"@"):
            return None
        hops: list[bytes] = []
        while self.at_special(b"@"):
            self.pos += 1
            hops.append(b"@" + self.dotted(domain=True))
            while self.at_special(b","):
                self.pos += 1
        if self.at_special(b":"):
            self.pos += 1
        return b",".join(hops)

    def addr_spec(self) -> tuple[bytes, bytes]:
        local = self.dotted(domain=False)
        if not self.at_special(b"@"):
            return local, b""
        self.pos += 1
        return local, self.dotted(domain=True)

    def dotted(self, *, domain: bool) -> bytes:
        """A dot-atom, quoted local part or (for a domain) domain literal."""
        out = bytearray()
        while (token := self.peek()) is not None:
            if token.kind == "word" or (domain and token.kind == "literal"):
                out += token.text
            elif token.kind == "special" and token.text == b".":
                out += b"."
            else:
                break
            self.pos += 1
        return bytes(out)


def parse_address_list(value: bytes) -> list[Address]:
    """The addresses and group markers of an address-list header value."""
    return _AddressParser(value).parse()


def address_list_value(value: bytes | None) -> ImapValue:
    """An ENVELOPE address list: NIL when absent or without addresses."""
    if value is None:
        return None
    addresses = parse_address_list(value)
    if not addresses:
        return None
    return [Adjacent(tuple(address.to_value() for address in addresses))]


def envelope(message: MimePart) -> ImapValue:
    """The ENVELOPE of ``message`` (a message's root part, or the part
    :attr:`MimePart.message` of a message/rfc822 part)."""
    from_ = address_list_value(message.header_value(b"from"))
    sender = address_list_value(message.header_value(b"sender"))
    reply_to = address_list_value(message.header_value(b"reply-to"))
    return [
        message.header_value(b"date"),
        message.header_value(b"subject"),
        from_,
        from_ if sender is None else sender,
        from_ if reply_to is None else reply_to,
        address_list_value(message.header_value(b"to")),
        address_list_value(message.header_value(b"cc")),
        address_list_value(message.header_value(b"bcc")),
        message.header_value(b"in-reply-to"),
        message.header_value(b"message-id"),
    ]
