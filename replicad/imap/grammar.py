"""The command grammar: one complete command's octets to a command record
(RFC 3501 §9, RFC 9051 §9 and the extensions' ABNF cited at each rule).

:func:`parse_command` is pure and total: it returns a record from
:mod:`replicad.imap.commands` or raises a :class:`BadInputError` (most
often :class:`~replicad.imap.lexer.CommandSyntaxError`) naming the
problem.  The incremental framing that decides where a command ends lives
in :mod:`replicad.imap.parser`; this module never sees partial input.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from replicad.flags import normalise_flag
from replicad.imap import commands as c
from replicad.imap.binaryparts import encode_binary_parts
from replicad.imap.lexer import CommandSyntaxError, Reader, UnknownCharsetError, is_tag_char
from replicad.imap.mutf7 import mailbox_name_from_wire
from replicad.imap.searchgrammar import parse_search_program
from replicad.imap.sequences import SequenceSet

#: Commands that take the ``UID`` prefix (RFC 3501 §6.4.8, RFC 4315, RFC 6851).
UID_COMMANDS: Final = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})

_SIMPLE_FETCH: Final = {a.value: a for a in c.FetchAttribute}
_FETCH_MACROS: Final = {
    "FAST": (c.FetchAttribute.FLAGS, c.FetchAttribute.INTERNALDATE, c.FetchAttribute.RFC822_SIZE),
    "ALL": (
        c.FetchAttribute.FLAGS,
        c.FetchAttribute.INTERNALDATE,
        c.FetchAttribute.RFC822_SIZE,
        c.FetchAttribute.ENVELOPE,
    ),
    "FULL": (
        c.FetchAttribute.FLAGS,
        c.FetchAttribute.INTERNALDATE,
        c.FetchAttribute.RFC822_SIZE,
        c.FetchAttribute.ENVELOPE,
        c.FetchAttribute.BODY,
    ),
}
_SECTION_WORD_CHARS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")
_FETCH_WORD_CHARS: Final = _SECTION_WORD_CHARS | frozenset(b"0123456789")
_STATUS_ITEMS: Final = {item.value: item for item in c.StatusItem}
_SEARCH_RETURNS: Final = {opt.value: opt for opt in c.SearchReturn}
_LIST_SELECTION: Final = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURNS: Final = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
_SPECIAL_USE: Final = frozenset(
    {"\\ALL", "\\ARCHIVE", "\\DRAFTS", "\\FLAGGED", "\\JUNK", "\\SENT", "\\TRASH"}
)


def read_tag(reader: Reader) -> str:
    """RFC 3501 ``tag``: 1*<ASTRING-CHAR except "+">."""
    start = reader.pos
    while not reader.at_end() and is_tag_char(reader.data[reader.pos]):
        reader.pos += 1
    if reader.pos == start:
        raise reader.error("expected a tag")
    return reader.data[start : reader.pos].decode("ascii")


def parse_tag(line: bytes) -> str | None:
    """The tag a command line starts with, or ``None`` when it has no valid
    tag followed by a space (the error is then answered untagged)."""
    reader = Reader(line)
    try:
        tag = read_tag(reader)
    except CommandSyntaxError:
        return None
    return tag if reader.peek() == 0x20 else None


def parse_command(data: bytes, *, utf8_names: bool = False) -> c.Command:
    """One complete command (lines and literals, without the final CRLF) to
    its record.  ``utf8_names``: mailbox names are UTF-8 (RFC 6855
    UTF8=ACCEPT enabled) instead of modified UTF-7."""
    reader = Reader(data)
    tag = read_tag(reader)
    reader.sp()
    name = reader.keyword("a command name")
    uid = False
    if name == "UID":
        reader.sp()
        name = reader.keyword("a command name after UID")
        if name not in UID_COMMANDS:
            raise CommandSyntaxError(f"UID {name} is not a command")
        uid = True
    handler = _HANDLERS.get(name)
    if handler is None:
        return c.UnknownCommand(tag, name)
    command = handler(_Context(reader, tag, uid, utf8_names))
    reader.end()
    return command


@dataclass(frozen=True, slots=True)
class _Context:
    r: Reader
    tag: str
    uid: bool
    utf8_names: bool

    def name(self, raw: bytes) -> str:
        if self.utf8_names:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CommandSyntaxError("mailbox name is not valid UTF-8") from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise CommandSyntaxError(
                "8-bit mailbox name: use modified UTF-7 or ENABLE UTF8=ACCEPT"
            ) from None
        return mailbox_name_from_wire(text)

    def mailbox(self) -> str:
        """RFC 3501 ``mailbox``: INBOX in any case is INBOX (§5.1)."""
        name = self.name(self.r.astring("a mailbox name"))
        return "INBOX" if name.upper() == "INBOX" else name


Handler = Callable[[_Context], c.Command]


def _no_arguments(make: Callable[[str], c.Command]) -> Handler:
    return lambda ctx: make(ctx.tag)


# --- any state, not authenticated ----------------------------------------------


def _login(ctx: _Context) -> c.Command:
    ctx.r.sp()
    user = ctx.r.astring("a user name")
    ctx.r.sp()
    password = ctx.r.astring("a password")
    try:
        username = user.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandSyntaxError("user name is not valid UTF-8") from None
    return c.Login(ctx.tag, username, password)


def decode_base64(line: bytes) -> bytes:
    """Strict base64 of a SASL exchange (RFC 4422 §5 via RFC 3501 §6.2.2)."""
    try:
        return base64.b64decode(line, validate=True)
    except binascii.Error:
        raise CommandSyntaxError("invalid base64 in SASL data") from None


def parse_sasl_plain(message: bytes) -> tuple[str, str, bytes]:
    """RFC 4616 §2: ``[authzid] NUL authcid NUL passwd`` to (authzid, authcid,
    password); authzid is ``""`` when absent.  Raises :class:`CommandSyntaxError`
    (answered ``BAD``) for a malformed message."""
    parts = message.split(b"\x00")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise CommandSyntaxError("malformed PLAIN message")
    try:
        return parts[0].decode("utf-8"), parts[1].decode("utf-8"), parts[2]
    except UnicodeDecodeError:
        raise CommandSyntaxError("PLAIN identities must be UTF-8") from None


def _authenticate(ctx: _Context) -> c.Command:
    ctx.r.sp()
    mechanism = ctx.r.keyword("a SASL mechanism")
    initial: bytes | None = None
    if ctx.r.try_take(b" "):
        # RFC 4959: "=" is an empty initial response.
        raw = ctx.r.data[ctx.r.pos :]
        ctx.r.pos = len(ctx.r.data)
        initial = b"" if raw == b"=" else decode_base64(raw)
    return c.Authenticate(ctx.tag, mechanism, initial)


def _id(ctx: _Context) -> c.Command:
    """RFC 2971 §3.3: ``"ID" SP ("(" string SP nstring *(SP string SP nstring) ")" / NIL)``."""
    r = ctx.r
    r.sp()
    if r.try_nil():
        return c.Id(ctx.tag, None)
    r.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while not r.try_take(b")"):
        if params:
            r.sp()
        field = r.string("an ID field name").decode("utf-8", "replace")
        r.sp()
        value = r.nstring("an ID value or NIL")
        params.append((field, None if value is None else value.decode("utf-8", "replace")))
    return c.Id(ctx.tag, tuple(params))


def _enable(ctx: _Context) -> c.Command:
    names: list[str] = []
    while ctx.r.try_take(b" "):
        names.append(ctx.r.keyword("a capability name"))
    if not names:
        raise ctx.r.error("ENABLE needs at least one capability")
    return c.Enable(ctx.tag, tuple(names))


# --- mailboxes -------------------------------------------------------------------


def _select(read_only: bool) -> Handler:
    def handler(ctx: _Context) -> c.Command:
        r = ctx.r
        r.sp()
        mailbox = ctx.mailbox()
        condstore = False
        qresync: c.QresyncParams | None = None
        if r.try_take(b" ("):
            first = True
            while not r.try_take(b")"):
                if not first:
                    r.sp()
                first = False
                param = r.keyword("a SELECT parameter")
                if param == "CONDSTORE":
                    condstore = True
                elif param == "QRESYNC":
                    r.sp()
                    qresync = _qresync_params(r)
                else:
                    raise CommandSyntaxError(f"unknown SELECT parameter {param}")
        return c.Select(ctx.tag, mailbox, read_only, condstore, qresync)

    return handler


def _qresync_params(r: Reader) -> c.QresyncParams:
    """RFC 7162 §7 ``select-param`` QRESYNC."""
    r.expect(b"(")
    uidvalidity = r.nz_number("a UIDVALIDITY")
    r.sp()
    modseq = r.modseq()
    known: SequenceSet | None = None
    match_seq: SequenceSet | None = None
    match_uids: SequenceSet | None = None
    if r.try_take(b" "):
        if r.peek() != 0x28:
            known = r.sequence_set()
            if not r.try_take(b" "):
                r.expect(b")")
                return c.QresyncParams(uidvalidity, modseq, known)
        r.expect(b"(")
        match_seq = r.sequence_set()
        r.sp()
        match_uids = r.sequence_set()
        r.expect(b")")
    r.expect(b")")
    return c.QresyncParams(uidvalidity, modseq, known, match_seq, match_uids)


def _create(ctx: _Context) -> c.Command:
    """RFC 3501 §6.3.3 with RFC 6154 §3 ``create-param`` ``USE (...)``."""
    r = ctx.r
    r.sp()
    mailbox = ctx.mailbox()
    uses: list[str] = []
    if r.try_take(b" ("):
        r.expect(b"USE", "USE")
        r.sp()
        for flag in r.flag_list():
            if flag.upper() not in _SPECIAL_USE:
                raise CommandSyntaxError(f"{flag} is not a special-use attribute")
            uses.append(flag)
        r.expect(b")")
    return c.Create(ctx.tag, mailbox, tuple(uses))


def _one_mailbox(make: Callable[[str, str], c.Command]) -> Handler:
    def handler(ctx: _Context) -> c.Command:
        ctx.r.sp()
        return make(ctx.tag, ctx.mailbox())

    return handler


def _rename(ctx: _Context) -> c.Command:
    ctx.r.sp()
    old = ctx.mailbox()
    ctx.r.sp()
    return c.Rename(ctx.tag, old, ctx.mailbox())


def _options(r: Reader, what: str) -> list[str]:
    """``"(" [option *(SP option)] ")"`` of plain atoms."""
    r.expect(b"(")
    found: list[str] = []
    while not r.try_take(b")"):
        if found:
            r.sp()
        found.append(r.keyword(what))
    return found


def _status_items(r: Reader) -> tuple[c.StatusItem, ...]:
    items: list[c.StatusItem] = []
    for name in _options(r, "a status item"):
        item = _STATUS_ITEMS.get(name)
        if item is None:
            raise CommandSyntaxError(f"unknown status item {name}")
        items.append(item)
    if not items:
        raise CommandSyntaxError("STATUS needs at least one item")
    return tuple(items)


def _list(ctx: _Context) -> c.Command:
    """RFC 3501 §6.3.8, extended by RFC 5258 §6, RFC 5819 and RFC 6154."""
    r = ctx.r
    r.sp()
    extended = False
    selection: set[str] = set()
    if r.peek() == 0x28:
        extended = True
        for option in _options(r, "a LIST selection option"):
            if option not in _LIST_SELECTION:
                raise CommandSyntaxError(f"unknown LIST selection option {option}")
            selection.add(option)
        if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
            # RFC 5258 §3.1: never alone, nor with REMOTE only.
            raise CommandSyntaxError("RECURSIVEMATCH needs another selection option")
        r.sp()
    reference = ctx.name(r.astring("a reference name"))
    r.sp()
    patterns: list[str] = []
    if r.try_take(b"("):
        extended = True
        while True:
            patterns.append(ctx.name(r.list_mailbox()))
            if r.try_take(b")"):
                break
            r.sp()
    else:
        patterns.append(ctx.name(r.list_mailbox()))
    returns: set[str] = set()
    status_items: tuple[c.StatusItem, ...] | None = None
    if r.try_take(b" "):
        extended = True
        r.expect(b"RETURN", "RETURN")
        r.sp()
        r.expect(b"(")
        while not r.try_take(b")"):
            if returns or status_items is not None:
                r.sp()
            option = r.keyword("a LIST return option")
            if option == "STATUS":
                r.sp()
                status_items = _status_items(r)
            elif option in _LIST_RETURNS:
                returns.add(option)
            else:
                raise CommandSyntaxError(f"unknown LIST return option {option}")
    return c.List(
        ctx.tag,
        reference,
        tuple(patterns),
        frozenset(selection),
        frozenset(returns),
        status_items,
        extended,
    )


def _lsub(ctx: _Context) -> c.Command:
    r = ctx.r
    r.sp()
    reference = ctx.name(r.astring("a reference name"))
    r.sp()
    return c.Lsub(ctx.tag, reference, ctx.name(r.list_mailbox()))


def _status(ctx: _Context) -> c.Command:
    ctx.r.sp()
    mailbox = ctx.mailbox()
    ctx.r.sp()
    return c.Status(ctx.tag, mailbox, _status_items(ctx.r))


def _flags(raw: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(normalise_flag(flag) for flag in raw))


def _append(ctx: _Context) -> c.Command:
    """RFC 3501 §6.3.11, RFC 3502 MULTIAPPEND, RFC 3516 literal8 (whose
    binary parts are re-encoded for storage, :mod:`~replicad.imap.binaryparts`)."""
    r = ctx.r
    r.sp()
    mailbox = ctx.mailbox()
    messages: list[c.AppendMessage] = []
    while r.try_take(b" "):
        flags: tuple[str, ...] = ()
        if r.peek() == 0x28:
            flags = _flags(r.flag_list())
            r.sp()
        date = None
        if r.peek() == 0x22:
            date = r.date_time()
            r.sp()
        data, binary = r.literal()
        if binary:
            data = encode_binary_parts(data)
        messages.append(c.AppendMessage(data, flags, date, binary))
    if not messages:
        raise r.error("APPEND needs a message literal")
    return c.Append(ctx.tag, mailbox, tuple(messages))


# --- selected ----------------------------------------------------------------------


def _expunge(ctx: _Context) -> c.Command:
    if not ctx.uid:
        return c.Expunge(ctx.tag)
    ctx.r.sp()
    return c.Expunge(ctx.tag, ctx.r.sequence_set())


def _copy_or_move(make: type[c.Copy] | type[c.Move]) -> Handler:
    def handler(ctx: _Context) -> c.Command:
        ctx.r.sp()
        sequence = ctx.r.sequence_set()
        ctx.r.sp()
        return make(ctx.tag, ctx.uid, sequence, ctx.mailbox())

    return handler


def _store(ctx: _Context) -> c.Command:
    """RFC 3501 §6.4.6 with RFC 7162 §3.1.3 UNCHANGEDSINCE."""
    r = ctx.r
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    unchanged: int | None = None
    if r.try_take(b"("):
        r.expect(b"UNCHANGEDSINCE", "UNCHANGEDSINCE")
        r.sp()
        unchanged = r.modseq(zero=True)
        r.expect(b")")
        r.sp()
    if r.try_take(b"+"):
        mode = c.StoreMode.ADD
    elif r.try_take(b"-"):
        mode = c.StoreMode.REMOVE
    else:
        mode = c.StoreMode.REPLACE
    r.expect(b"FLAGS", "FLAGS, +FLAGS or -FLAGS")
    silent = r.try_take(b".SILENT")
    r.sp()
    if r.peek() == 0x28:
        raw = r.flag_list()
    else:
        raw = [r.flag()]
        while r.try_take(b" "):
            raw.append(r.flag())
    return c.Store(ctx.tag, ctx.uid, sequence, mode, _flags(raw), silent, unchanged)


def _fetch(ctx: _Context) -> c.Command:
    """RFC 3501 §6.4.5, RFC 3516 BINARY, RFC 7162 §3.1.4 / §3.2.6 modifiers."""
    r = ctx.r
    r.sp()
    sequence = r.sequence_set()
    r.sp()
    items: list[c.FetchItem] = []
    if r.try_take(b"("):
        while True:
            items.append(_fetch_item(r))
            if r.try_take(b")"):
                break
            r.sp()
    else:
        word = _fetch_word(r)
        macro = _FETCH_MACROS.get(word)
        if macro is not None:
            items.extend(c.FetchSimple(a) for a in macro)
        else:
            items.append(_fetch_item(r, word))
    changed_since: int | None = None
    vanished = False
    if r.try_take(b" ("):
        first = True
        while not r.try_take(b")"):
            if not first:
                r.sp()
            first = False
            modifier = r.keyword("a FETCH modifier")
            if modifier == "CHANGEDSINCE":
                r.sp()
                changed_since = r.modseq(zero=True)
            elif modifier == "VANISHED":
                vanished = True
            else:
                raise CommandSyntaxError(f"unknown FETCH modifier {modifier}")
    if vanished and (not ctx.uid or changed_since is None):
        # RFC 7162 §3.2.6: VANISHED only in UID FETCH, and with CHANGEDSINCE.
        raise CommandSyntaxError("VANISHED needs UID FETCH and CHANGEDSINCE")
    return c.Fetch(ctx.tag, ctx.uid, sequence, tuple(items), changed_since, vanished)


def _fetch_word(r: Reader) -> str:
    start = r.pos
    while not r.at_end() and r.data[r.pos] in _FETCH_WORD_CHARS:
        r.pos += 1
    if r.pos == start:
        raise r.error("expected a FETCH item")
    return r.data[start : r.pos].decode("ascii").upper()


def _fetch_item(r: Reader, word: str | None = None) -> c.FetchItem:
    name = word if word is not None else _fetch_word(r)
    if name in ("BODY", "BODY.PEEK") and r.peek() == 0x5B:
        section = _section(r)
        return c.FetchBody(section, _partial(r), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK"):
        part = _binary_part(r)
        return c.FetchBinary(part, _partial(r), peek=name == "BINARY.PEEK")
    if name == "BINARY.SIZE":
        return c.FetchBinarySize(_binary_part(r))
    attribute = _SIMPLE_FETCH.get(name)
    if attribute is None:
        raise CommandSyntaxError(f"unknown FETCH item {name}")
    return c.FetchSimple(attribute)


def _part_path(r: Reader) -> list[int]:
    part = [r.nz_number("a part number")]
    while r.peek() == 0x2E and r.pos + 1 < len(r.data) and _is_digit(r.data[r.pos + 1]):
        r.pos += 1
        part.append(r.nz_number("a part number"))
    return part


def _is_digit(octet: int | None) -> bool:
    return octet is not None and 0x30 <= octet <= 0x39


def _binary_part(r: Reader) -> tuple[int, ...]:
    """RFC 3516 ``section-binary``: ``"[" [section-part] "]"``."""
    r.expect(b"[", "'[' of a BINARY section")
    part = [] if r.peek() == 0x5D else _part_path(r)
    r.expect(b"]")
    return tuple(part)


def _section(r: Reader) -> c.Section:
    """RFC 3501 ``section``: ``"[" [section-spec] "]"``."""
    r.expect(b"[")
    if r.try_take(b"]"):
        return c.Section()
    part: list[int] = []
    if _is_digit(r.peek()):
        part = _part_path(r)
        if r.try_take(b"]"):
            return c.Section(tuple(part))
        r.expect(b".")
    start = r.pos
    while not r.at_end() and r.data[r.pos] in _SECTION_WORD_CHARS:
        r.pos += 1
    word = r.data[start : r.pos].decode("ascii").upper()
    try:
        text = c.SectionText(word)
    except ValueError:
        raise CommandSyntaxError(f"unknown section text {word!r}") from None
    if text is c.SectionText.MIME and not part:
        raise CommandSyntaxError("MIME needs a part number")
    fields: list[str] = []
    if text in (c.SectionText.HEADER_FIELDS, c.SectionText.HEADER_FIELDS_NOT):
        r.sp()
        r.expect(b"(")
        while True:
            fields.append(r.astring("a header field name").decode("ascii", "replace"))
            if r.try_take(b")"):
                break
            r.sp()
    r.expect(b"]")
    return c.Section(tuple(part), text, tuple(fields))


def _partial(r: Reader) -> c.Partial | None:
    if not r.try_take(b"<"):
        return None
    start = r.number(what="a partial start")
    r.expect(b".")
    count = r.nz_number("a partial length")
    r.expect(b">")
    return c.Partial(start, count)


# --- SEARCH --------------------------------------------------------------------------


def _search(ctx: _Context) -> c.Command:
    """RFC 3501 §6.4.4; RFC 4731 §3 ``RETURN (...)`` before ``CHARSET``."""
    r = ctx.r
    r.sp()
    returns: frozenset[c.SearchReturn] | None = None
    if r.try_take(b"RETURN "):
        chosen: set[c.SearchReturn] = set()
        for name in _options(r, "a SEARCH return option"):
            option = _SEARCH_RETURNS.get(name)
            if option is None:
                raise CommandSyntaxError(f"unknown SEARCH return option {name}")
            chosen.add(option)
        returns = frozenset(chosen)
        r.sp()
    charset: str | None = None
    if r.try_take(b"CHARSET "):
        charset = r.astring("a charset").decode("ascii", "replace")
        try:
            # A non-empty probe: it also refuses codecs that are not text encodings.
            b"a".decode(charset)
        except LookupError:
            raise UnknownCharsetError(f"unknown charset {charset}") from None
        except UnicodeDecodeError:
            pass  # a known charset (e.g. UTF-16) in which one octet is incomplete
        r.sp()
    criteria = parse_search_program(r, charset or "utf-8")
    return c.Search(ctx.tag, ctx.uid, criteria, charset, returns)


_HANDLERS: Final[dict[str, Handler]] = {
    "CAPABILITY": _no_arguments(c.Capability),
    "NOOP": _no_arguments(c.Noop),
    "LOGOUT": _no_arguments(c.Logout),
    "STARTTLS": _no_arguments(c.StartTls),
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "ID": _id,
    "ENABLE": _enable,
    "NAMESPACE": _no_arguments(c.Namespace),
    "SELECT": _select(read_only=False),
    "EXAMINE": _select(read_only=True),
    "CREATE": _create,
    "DELETE": _one_mailbox(c.Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(c.Subscribe),
    "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_arguments(c.Idle),
    "CHECK": _no_arguments(c.Check),
    "CLOSE": _no_arguments(c.Close),
    "UNSELECT": _no_arguments(c.Unselect),
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy_or_move(c.Copy),
    "MOVE": _copy_or_move(c.Move),
}
