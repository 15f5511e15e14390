"""The SEARCH criteria grammar (RFC 3501 §6.4.4 ``search-key``, RFC 9051
§6.4.4, RFC 7162 §3.1.5 MODSEQ, RFC 5182 ``$``) into the tree of
:mod:`replicad.imap.searchkeys`."""

from __future__ import annotations

from typing import Final

from replicad.flags import normalise_flag
from replicad.imap import searchkeys as k
from replicad.imap.lexer import CommandSyntaxError, Reader

#: Nesting depth of search keys (NOT, OR, parentheses): deeper programs are
#: refused rather than risk the interpreter's recursion limit.
MAX_SEARCH_DEPTH: Final = 64

_DATE_KEYS: Final = {
    f"{prefix}{relation.value}": (field, relation)
    for prefix, field in (("", k.DateField.INTERNAL), ("SENT", k.DateField.SENT))
    for relation in k.DateRelation
}
_ENTRY_TYPES: Final = {t.value: t for t in k.EntryType}


def parse_search_program(reader: Reader, charset: str) -> k.SearchKey:
    """``search-key *(SP search-key)`` up to the end of the command; strings
    decoded with ``charset``.  Several keys are an ``AndKey``."""
    searcher = _SearchParser(reader, charset)
    keys = [searcher.key(0)]
    while reader.try_take(b" "):
        keys.append(searcher.key(0))
    return keys[0] if len(keys) == 1 else k.AndKey(tuple(keys))


class _SearchParser:
    """RFC 3501 ``search-key`` with RFC 7162 §3.1.5 MODSEQ."""

    def __init__(self, reader: Reader, charset: str) -> None:
        self.r = reader
        self.charset = charset

    def text(self, what: str) -> str:
        self.r.sp()
        raw = self.r.astring(what)
        try:
            return raw.decode(self.charset)
        except UnicodeDecodeError:
            raise CommandSyntaxError(f"search string is not valid {self.charset}") from None

    def key(self, depth: int) -> k.SearchKey:
        if depth > MAX_SEARCH_DEPTH:
            raise CommandSyntaxError("search program nested too deeply")
        r = self.r
        octet = r.peek()
        if octet == 0x28:
            r.pos += 1
            keys = [self.key(depth + 1)]
            while not r.try_take(b")"):
                r.sp()
                keys.append(self.key(depth + 1))
            return keys[0] if len(keys) == 1 else k.AndKey(tuple(keys))
        if octet is not None and (0x30 <= octet <= 0x39 or octet in b"*$"):
            return k.SequenceKey(r.sequence_set())
        name = r.keyword("a search key")
        simple = self._simple(name)
        if simple is not None:
            return simple
        return self._with_arguments(name, depth)

    def _simple(self, name: str) -> k.SearchKey | None:
        if name == "ALL":
            return k.AllKey()
        if name in k.FLAG_KEYS:
            return k.FlagKey(k.FLAG_KEYS[name], True)
        if name.startswith("UN") and name[2:] in k.FLAG_KEYS:
            return k.FlagKey(k.FLAG_KEYS[name[2:]], False)
        if name == "RECENT":
            return k.RecentKey(True)
        if name == "OLD":
            return k.RecentKey(False)
        if name == "NEW":
            return k.AndKey((k.RecentKey(True), k.FlagKey("\\Seen", False)))
        return None

    def _with_arguments(self, name: str, depth: int) -> k.SearchKey:
        r = self.r
        if name in ("KEYWORD", "UNKEYWORD"):
            r.sp()
            flag = normalise_flag(r.atom("a keyword"))
            return k.FlagKey(flag, name == "KEYWORD")
        if name in k.HEADER_KEYS:
            return k.HeaderKey(k.HEADER_KEYS[name], self.text("a search string"))
        if name == "HEADER":
            field = self.text("a header field name")
            return k.HeaderKey(field, self.text("a search string"))
        if name == "BODY":
            return k.BodyKey(self.text("a search string"))
        if name == "TEXT":
            return k.TextKey(self.text("a search string"))
        if name in _DATE_KEYS:
            date_field, relation = _DATE_KEYS[name]
            r.sp()
            return k.DateKey(date_field, relation, r.date())
        if name in ("LARGER", "SMALLER"):
            r.sp()
            return k.SizeKey(name == "LARGER", r.number(what="a size"))
        if name == "UID":
            r.sp()
            return k.UidKey(r.sequence_set())
        if name == "MODSEQ":
            return self._modseq()
        if name == "NOT":
            r.sp()
            return k.NotKey(self.key(depth + 1))
        if name == "OR":
            r.sp()
            left = self.key(depth + 1)
            r.sp()
            return k.OrKey(left, self.key(depth + 1))
        raise CommandSyntaxError(f"unknown search key {name}")

    def _modseq(self) -> k.SearchKey:
        """RFC 7162 §3.1.5: ``MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer``."""
        r = self.r
        r.sp()
        if r.peek() == 0x22:
            entry = r.quoted().decode("ascii", "replace")
            r.sp()
            kind = _ENTRY_TYPES.get(r.atom("an entry type").lower())
            if kind is None:
                raise CommandSyntaxError("entry type must be priv, shared or all")
            r.sp()
            return k.ModSeqKey(r.modseq(zero=True), entry, kind)
        return k.ModSeqKey(r.modseq(zero=True))
