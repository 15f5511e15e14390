"""One typed, frozen record per verb and per reply payload (protocol-spec/verbs.md).

A record knows its fields' wire types (its ``SCHEMA``, aligned with its
dataclass fields) and converts with :meth:`Record.to_fields` /
:meth:`Record.from_fields`.  ``from_fields`` checks every field's exact
type and range -- it is the *only* validation a received frame's fields
get (see :class:`~replicad.protocol.frames.FrameDecoder`), so anything
it lets through is safe for the engine: bounded ints, canonical flags
(RFC 3501 §2.3.2), well-formed UID sets, GUIDs of the right length.

Three kinds of frame carry records:

* a *command* ``[tag, VERB, fields...]`` (a :class:`Command`), answered by
  exactly one ``[tag, "OK", payload...]`` (the command's ``REPLY``
  record), ``[tag, "NO", code, text]`` or ``[tag, "BAD", text]``;
* *untagged* data ``["*", VERB, fields...]`` (an :class:`Untagged`): the
  HELLO, answers streamed before a command's OK (``* FETCH``,
  ``* MAILBOX``, ``* DIGEST``), announcements (``* EPOCH``, ``* ROUTES``),
  the master's change stream (``* SAVE seq ...`` etc.) and its ``* ACK``;
* a fatal ``["*", "BAD", text]``: the sender closes the link after it.

:func:`decode` turns a frame into a :class:`CommandFrame`,
:class:`UntaggedFrame` or :class:`ReplyFrame`; the ``encode_*`` functions
go the other way.  Malformed fields raise
:class:`~replicad.errors.ProtocolError` only.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Final, Self, TypeVar, cast

from replicad.blob import MAX_BODY, Blob
from replicad.errors import BadInputError, ProtocolError
from replicad.flags import SYSTEM_FLAGS, normalise_flag
from replicad.protocol.frames import DEFAULT_MAX_FRAME, UNTAGGED, Frame, Value
from replicad.uidset import MAX_UID, UidSet

PROTOCOL_VERSION: Final = 4
MAX_U16: Final = 2**16 - 1
MAX_U32: Final = 2**32 - 1
MAX_U63: Final = 2**63 - 1  # MODSEQ range of RFC 7162 §3.1.1 (63-bit)
MAX_NAME_LEN: Final = 1024  # user and mailbox names, in characters
MAX_TEXT_LEN: Final = 4096  # NO / BAD reasons
MAX_LIST: Final = 100_000  # entries in one list field (SYNC, HAVE, UPDATE...)
MAX_TAG_LEN: Final = 16

_NODE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ATOM_RE: Final = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,31}")
_TAG_RE: Final = re.compile(r"[A-Za-z0-9.]{1,16}")

R = TypeVar("R", bound="Record")


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """A function storing field ``name`` on a new instance of ``cls``, past the
    frozen ``__setattr__`` (what the dataclass ``__init__`` does, one call cheaper)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            descriptor = vars(klass)[name]
            if isinstance(descriptor, types.MemberDescriptorType):
                setter: Callable[[Any, Any], None] = descriptor.__set__
                return setter
            break

    def set_field(record: Any, value: Any) -> None:
        object.__setattr__(record, name, value)

    return set_field


# --- field types ---------------------------------------------------------------

#: Checks and converts one received wire value; raises ProtocolError naming the field.
Check = Callable[[Value], Any]


class FieldType:
    """Converts one field between its record value and its wire value.

    Subclasses implement :meth:`encode` and :meth:`checker`.  The checker is
    the one place a type's validation is written: it is built once per
    record field (see :func:`record_decoder`), so the per-frame cost is one
    call of a closure whose bounds and error texts are already bound.
    """

    def encode(self, value: Any) -> Value:
        raise NotImplementedError

    def checker(self, name: str) -> Check:
        """A function returning the record value of a valid wire value and
        raising :class:`ProtocolError` (reason prefixed with ``name``) otherwise."""
        raise NotImplementedError

    def decode(self, value: Value, name: str) -> Any:
        """``checker(name)(value)``, for one-off use (builds the checker each call)."""
        return self.checker(name)(value)


class UInt(FieldType):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def encode(self, value: Any) -> Value:
        return int(value)

    def checker(self, name: str) -> Check:
        low, high = self.low, self.high
        reason = f"{name}: expected an integer in {low}..{high}"

        def check(value: Value) -> int:
            # type() is, not isinstance: bool is an int subclass and not a wire type.
            if type(value) is int and low <= value <= high:
                return value
            raise ProtocolError(reason)

        return check


class Text(FieldType):
    def __init__(self, min_len: int = 1, max_len: int = MAX_NAME_LEN) -> None:
        self.min_len, self.max_len = min_len, max_len

    def encode(self, value: Any) -> Value:
        return str(value)

    def checker(self, name: str) -> Check:
        min_len, max_len = self.min_len, self.max_len
        reason = f"{name}: expected a string of {min_len}..{max_len} characters"
        nul = f"{name}: NUL in string"

        def check(value: Value) -> str:
            if type(value) is not str or not min_len <= len(value) <= max_len:
                raise ProtocolError(reason)
            if "\x00" in value:
                raise ProtocolError(nul)
            return value

        return check


class Pattern(FieldType):
    """A string matching a regular expression (node ids, atoms, tags)."""

    def __init__(self, pattern: re.Pattern[str], what: str) -> None:
        self.pattern, self.what = pattern, what

    def encode(self, value: Any) -> Value:
        return str(value)

    def checker(self, name: str) -> Check:
        fullmatch = self.pattern.fullmatch
        reason = f"{name}: expected {self.what}"

        def check(value: Value) -> str:
            if type(value) is not str or fullmatch(value) is None:
                raise ProtocolError(reason)
            return value

        return check


class Octets(FieldType):
    def __init__(self, min_len: int, max_len: int) -> None:
        self.min_len, self.max_len = min_len, max_len

    def encode(self, value: Any) -> Value:
        return bytes(value)

    def checker(self, name: str) -> Check:
        min_len, max_len = self.min_len, self.max_len
        if min_len == max_len:
            reason = f"{name}: expected {min_len} bytes"
        else:
            reason = f"{name}: expected {min_len}..{max_len} bytes"

        def check(value: Value) -> bytes:
            if type(value) is not bytes or not min_len <= len(value) <= max_len:
                raise ProtocolError(reason)
            return value

        return check


class BlobField(FieldType):
    """A message body in its stored form (:class:`replicad.blob.Blob`): one bin,
    codec octet + payload (verbs.md, "Bodies").

    The check is :meth:`Blob.parse`'s, O(1): a known codec and, for zstd, a
    frame header declaring a content size of at most ``max_size`` octets
    and a bounded window (decompression bombs, I9).  The payload is checked
    against its size and hash by the store before it is kept
    (:meth:`replicad.store.blobs.PreparedBody.of`).
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size

    def encode(self, value: Any) -> Value:
        stored: bytes = value.stored
        return stored

    def checker(self, name: str) -> Check:
        max_size = self.max_size
        reason = f"{name}: expected a body (bin)"
        parse = Blob.parse

        def check(value: Value) -> Blob:
            if type(value) is not bytes:
                raise ProtocolError(reason)
            try:
                return parse(value, max_size)
            except ProtocolError as exc:
                raise ProtocolError(f"{name}: {exc.message}") from None

        return check


def _check_body_size(size: int, body: Blob | None) -> None:
    """A body field's cross-field rule: its declared size is the record's ``size``."""
    if body is not None and body.size != size:
        raise ValueError(f"body of {body.size} octets, size field says {size}")


class Uids(FieldType):
    """A UID set as its RFC 3501 string, in canonical form; ``*`` only where ``allow_star``.

    Canonical: what :class:`UidSet` prints, so every set has one wire form.
    """

    def __init__(self, allow_star: bool) -> None:
        self.allow_star = allow_star

    def encode(self, value: Any) -> Value:
        return str(value)

    def checker(self, name: str) -> Check:
        allow_star = self.allow_star

        def check(value: Value) -> UidSet:
            if type(value) is not str or not value or len(value) > MAX_TEXT_LEN * 16:
                raise ProtocolError(f"{name}: expected a UID set string")
            # Fast paths for the shapes a change stream is made of, "n" and
            # "lo:hi".  Each accepts only strings the general path below
            # accepts too, with the same result: ASCII digits without a
            # leading zero (so the string is canonical), in range, lo < hi.
            if value.isdigit() and value.isascii():
                if value[0] != "0" and len(value) <= _MAX_UID_DIGITS:
                    uid = int(value)
                    if uid <= MAX_UID:
                        return _make_uid_set(((uid, uid),))
            else:
                low, colon, high = value.partition(":")
                if (
                    colon
                    and low.isdigit()
                    and high.isdigit()
                    and value.isascii()
                    and low[0] != "0"
                    and high[0] != "0"
                    and len(low) <= _MAX_UID_DIGITS
                    and len(high) <= _MAX_UID_DIGITS
                ):
                    lo, hi = int(low), int(high)
                    if lo < hi <= MAX_UID:
                        return _make_uid_set(((lo, hi),))
            return _parse_uids(value, name, allow_star)

        return check


_MAX_UID_DIGITS: Final = len(str(MAX_UID))


def _uid_set_maker() -> Callable[[tuple[tuple[int, int], ...]], UidSet]:
    """``UidSet(ranges)`` for ranges already in normal form, past the frozen
    dataclass ``__init__`` when UidSet is a plain one-field dataclass (a
    third of the cost of checking a one-UID field)."""
    names = [f.name for f in dataclasses.fields(UidSet)]
    if names != ["ranges"] or hasattr(UidSet, "__post_init__"):
        return UidSet
    set_ranges = _slot_setter(UidSet, "ranges")
    new = object.__new__

    def make(ranges: tuple[tuple[int, int], ...]) -> UidSet:
        uids = new(UidSet)
        set_ranges(uids, ranges)
        return uids

    return make


_make_uid_set: Final = _uid_set_maker()


def _parse_uids(value: str, name: str, allow_star: bool) -> UidSet:
    """The general path of :class:`Uids`: parse, then insist on the canonical form."""
    if not value.isascii():
        # UidSet.parse takes str.isdigit() digits, which include non-ASCII
        # ones that int() refuses ("²"); no canonical set has them anyway.
        raise ProtocolError(f"{name}: UID set {value!r} is not ASCII")
    try:
        uids = UidSet.parse(value)
    except BadInputError as exc:
        raise ProtocolError(f"{name}: {exc}") from None
    except ValueError:  # int() refusing thousands of digits (sys.int_info)
        raise ProtocolError(f"{name}: UID set {value[:40]!r}... has an overlong number") from None
    if uids.has_star and not allow_star:
        raise ProtocolError(f"{name}: '*' not allowed here")
    if value == "all" or str(uids) != value:
        raise ProtocolError(f"{name}: UID set {value!r} is not in canonical form")
    return uids


#: System flags in their canonical spelling; they sort before every keyword.
_CANONICAL_SYSTEM_FLAGS: Final = frozenset(SYSTEM_FLAGS)


class FlagList(FieldType):
    """Flags and keywords, canonical order, no repeats (I5: always a delta or a state).

    System flags are accepted in any case and normalised (RFC 3501 §2.3.2);
    the order is checked on the normalised spelling: system flags first,
    then keywords, each group sorted (:func:`replicad.flags.sorted_flags`).
    """

    def encode(self, value: Any) -> Value:
        return list(value)

    def checker(self, name: str) -> Check:
        def check(value: Value) -> tuple[str, ...]:
            if type(value) is not list or len(value) > 1000:
                raise ProtocolError(f"{name}: expected a list of flags")
            # Fast path: nothing but canonically spelt system flags, whose
            # canonical order is plain string order.
            previous = ""
            for flag in value:
                if type(flag) is not str or flag not in _CANONICAL_SYSTEM_FLAGS:
                    return _check_flags(value, name)
                if flag <= previous:
                    return _check_flags(value, name)  # reports the error
                previous = flag
            return tuple(value)

        return check


def _check_flags(value: list[Any], name: str) -> tuple[str, ...]:
    """The general path of :class:`FlagList`: keywords and other spellings."""
    out: list[str] = []
    for flag in value:
        if type(flag) is not str:
            raise ProtocolError(f"{name}: flag is not a string")
        try:
            out.append(normalise_flag(flag))
        except BadInputError as exc:
            raise ProtocolError(f"{name}: {exc}") from None
    # Strictly increasing in (keyword?, name) order: sorted and no repeats.
    keys = [(not flag.startswith("\\"), flag) for flag in out]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise ProtocolError(f"{name}: flags not in canonical order or repeated")
    return tuple(out)


class Optional(FieldType):
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner

    def encode(self, value: Any) -> Value:
        return None if value is None else self.inner.encode(value)

    def checker(self, name: str) -> Check:
        inner = self.inner.checker(name)

        def check(value: Value) -> Any:
            return None if value is None else inner(value)

        return check


class ListOf(FieldType):
    def __init__(self, item: FieldType, max_len: int = MAX_LIST) -> None:
        self.item, self.max_len = item, max_len

    def encode(self, value: Any) -> Value:
        return [self.item.encode(v) for v in value]

    def checker(self, name: str) -> Check:
        item, max_len = self.item.checker(name), self.max_len
        reason = f"{name}: expected a list of at most {max_len} entries"

        def check(value: Value) -> tuple[Any, ...]:
            if type(value) is not list or len(value) > max_len:
                raise ProtocolError(reason)
            return tuple(map(item, value))

        return check


class Nested(FieldType):
    """A record inlined as a list of its fields."""

    def __init__(self, record: type[Record]) -> None:
        self.record = record

    def encode(self, value: Any) -> Value:
        return value.to_fields()  # type: ignore[no-any-return]

    def checker(self, name: str) -> Check:
        decode = record_decoder(self.record)
        reason = f"{name}: expected a list"

        def check(value: Value) -> Record:
            if type(value) is not list:
                raise ProtocolError(reason)
            return decode(value)

        return check


class OneOf(FieldType):
    """A record chosen by the atom in its first position (UPDATE operations)."""

    def __init__(self, *records: type[Record]) -> None:
        self.records = {r.VERB: r for r in records}

    def encode(self, value: Any) -> Value:
        return [value.VERB, *value.to_fields()]

    def checker(self, name: str) -> Check:
        decoders = {verb: record_decoder(record) for verb, record in self.records.items()}

        def check(value: Value) -> Record:
            if type(value) is not list or not value or type(value[0]) is not str:
                raise ProtocolError(f"{name}: expected (KIND fields...)")
            decode = decoders.get(value[0])
            if decode is None:
                raise ProtocolError(f"{name}: unknown kind {value[0]!r}")
            return decode(value[1:])

        return check


MBOX_ID: Final = UInt(0, MAX_U16)  # session-local mailbox id (seed 001)
U32: Final = UInt(0, MAX_U32)
UID: Final = UInt(1, MAX_U32)
UIDVALIDITY: Final = UInt(1, MAX_U32)
#: The largest hybrid-clock stamp a record may carry (verbs.md, "Value
#: ranges").  A stamp is ``milliseconds << 16 | counter``
#: (replicad.store.clock), so below 2^62 means milliseconds below 2^46: until
#: the year 4199.  Above it the decoder refuses (I9), because every node
#: pulls its clock past the stamps it applies and counts up from there: a
#: stamp at the top of the wire range (2^63 - 1) made the next local stamp
#: unencodable, and the outbox resent that change forever.  From 2^62 on,
#: 2^62 increments remain before 2^63 - 1 -- one per nanosecond for 146
#: years -- so no stamp a node derives from an accepted one overflows.
#: (A stamp far ahead of physical time is the engine's to refuse, not the
#: decoder's: that depends on the clock, this only on arithmetic.)
MAX_STAMP: Final = 2**62 - 1
#: The largest MODSEQ, change sequence number or epoch a record may carry.
#: RFC 7162 allows 63 bits (2^63 - 1); each of these is incremented by its
#: receiver (a replica's HIGHESTMODSEQ follows the master's, a resync
#: allocates above it, ACKs and epochs count up), so the same headroom
#: applies: 2^62 more increments fit before the 63-bit range ends.
MAX_COUNTER: Final = 2**62 - 1
MODSEQ: Final = UInt(0, MAX_COUNTER)
SEQ: Final = UInt(1, MAX_COUNTER)
#: Refused changes named in one ACK (a burst is at most 512 changes).
MAX_REFUSED: Final = 4096
EPOCH_T: Final = UInt(1, MAX_COUNTER)
TIME: Final = UInt(0, MAX_U63)  # seconds since the epoch, UTC
STAMP: Final = UInt(0, MAX_STAMP)  # hybrid logical clock: ms << 16 | counter (I5)
SIZE: Final = UInt(0, DEFAULT_MAX_FRAME)
GUID: Final = Octets(16, 16)  # random message / mailbox GUID
GUID_CHECK: Final = Octets(8, 8)  # the first 8 octets of a message GUID
HASH: Final = Octets(32, 32)  # SHA-256 of a body: the blob key
BODY: Final = BlobField(MAX_BODY)
USER: Final = Text(1, 255)
MAILBOX: Final = Text(1, MAX_NAME_LEN)
NODE: Final = Pattern(_NODE_RE, "a node id ([A-Za-z0-9][A-Za-z0-9._-]{0,62})")
ATOM: Final = Pattern(_ATOM_RE, "an upper-case atom")
FLAGS: Final = FlagList()
UIDS: Final = Uids(allow_star=False)
UIDS_OR_STAR: Final = Uids(allow_star=True)
REASON: Final = Text(0, MAX_TEXT_LEN)


def _check_deltas(add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """STORE's cross-field rule: no flag is both added and removed (I5)."""
    # Most deltas touch one side only; skip building sets for them.
    if add and remove and not set(add).isdisjoint(remove):
        raise ValueError("a flag is both added and removed")


# --- records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """A list of typed fields.  Subclasses set ``VERB`` and ``SCHEMA``.

    Subclasses are frozen dataclasses whose fields are all ``__init__``
    fields, aligned with ``SCHEMA``; cross-field rules go in
    ``__post_init__`` and raise ValueError (see :func:`record_decoder`).
    """

    VERB: ClassVar[str] = ""
    SCHEMA: ClassVar[tuple[FieldType, ...]] = ()
    #: Names of fields holding a session-local mailbox id (checked by the link).
    MBOX_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_fields(self) -> list[Value]:
        return [
            kind.encode(getattr(self, name))
            for kind, name in zip(self.SCHEMA, _field_names(type(self)), strict=True)
        ]

    @classmethod
    def from_fields(cls, fields: Sequence[Value]) -> Self:
        """The record whose wire fields are ``fields``; ProtocolError if any is invalid."""
        decode = _DECODERS.get(cls) or record_decoder(cls)
        return cast(Self, decode(fields))


_NAMES: dict[type, tuple[str, ...]] = {}
_DECODERS: dict[type, Callable[[Sequence[Value]], Record]] = {}


def _field_names(cls: type[Record]) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        if len(names) != len(cls.SCHEMA):
            raise TypeError(f"{cls.__name__}: SCHEMA does not match its fields")
        _NAMES[cls] = names
    return names


def record_decoder(cls: type[R]) -> Callable[[Sequence[Value]], R]:
    """The function behind ``cls.from_fields``, built once per record class.

    It checks the field count and every field with its type's checker, then
    fills a new instance directly and runs ``__post_init__`` -- the same
    result as ``cls(*values)`` without the generic ``__init__`` (measurably
    the larger part of decoding a small frame, tools/bench/bench_protocol.py).
    A ValueError or BadInputError from ``__post_init__`` (a cross-field
    rule) becomes a ProtocolError.
    """
    cached = _DECODERS.get(cls)
    if cached is not None:
        return cast(Callable[[Sequence[Value]], R], cached)
    names = _field_names(cls)
    if not all(f.init for f in dataclasses.fields(cls)):
        raise TypeError(f"{cls.__name__}: every field of a record must be an __init__ field")
    checks = tuple(kind.checker(name) for kind, name in zip(cls.SCHEMA, names, strict=True))
    steps = tuple(zip(checks, (_slot_setter(cls, name) for name in names), strict=True))
    post_init: Callable[[R], None] | None = getattr(cls, "__post_init__", None)
    label = cls.VERB or cls.__name__
    count = len(names)
    new = object.__new__

    def decode(fields: Sequence[Value]) -> R:
        if len(fields) != count:
            raise ProtocolError(f"{label}: expected {count} fields, got {len(fields)}")
        record = new(cls)
        for (check, set_field), value in zip(steps, fields, strict=True):
            set_field(record, check(value))
        if post_init is not None:
            try:
                post_init(record)
            except (ValueError, BadInputError) as exc:
                raise ProtocolError(f"{label}: {exc}") from None
        return record

    _DECODERS[cls] = decode
    return decode


@dataclass(frozen=True, slots=True)
class Empty(Record):
    """The payload of an OK that carries nothing."""


@dataclass(frozen=True, slots=True)
class Command(Record):
    """A tagged request; ``REPLY`` is the record type of its OK payload."""

    REPLY: ClassVar[type[Record]] = Empty


@dataclass(frozen=True, slots=True)
class Untagged(Record):
    """Untagged data: not a request, never answered."""


@dataclass(frozen=True, slots=True)
class Change(Untagged):
    """A record of the master's change stream; ``seq`` is per peer, ACKed cumulatively."""

    seq: int


# --- session -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Untagged):
    """First frame in each direction (handshake.md).  ``max_frame``/``max_inflight`` are
    what the *sender* accepts; the peer must stay within them."""

    VERB = "HELLO"
    SCHEMA = (
        UInt(1, MAX_U16),
        NODE,
        NODE,
        ListOf(ATOM, 64),
        UInt(64 * 1024, DEFAULT_MAX_FRAME),
        UInt(1, MAX_U16),
    )
    version: int
    cluster: str
    node: str
    capabilities: tuple[str, ...]
    max_frame: int
    max_inflight: int


@dataclass(frozen=True, slots=True)
class Fatal(Untagged):
    """``* BAD reason``: the sender closes the link after this frame (I9)."""

    VERB = "BAD"
    SCHEMA = (REASON,)
    reason: str


@dataclass(frozen=True, slots=True)
class Ping(Command):
    VERB = "PING"


@dataclass(frozen=True, slots=True)
class Compress(Command):
    """RFC 4978 style: after OK, each direction is one zstd stream (compression.md)."""

    VERB = "COMPRESS"
    SCHEMA = (ATOM,)
    algorithm: str


@dataclass(frozen=True, slots=True)
class Mbox(Command):
    """Binds session-local ``id`` (sender's direction) to a mailbox (seed 001 MBOX).

    Status fields are the sender's view; the receiver answers NO UIDVALIDITY if
    its UIDVALIDITY differs (the mailbox needs a full resync), OK otherwise.
    Redefining an id replaces its binding for frames that follow.
    """

    VERB = "MBOX"
    SCHEMA = (MBOX_ID, USER, MAILBOX, GUID, UIDVALIDITY, UID, U32, MODSEQ)
    MBOX_FIELDS = ()  # defines an id, does not reference one
    id: int
    user: str
    name: str
    guid: bytes
    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class Ack(Untagged):
    """Cumulative acknowledgement: every change with ``seq`` <= this was
    received and, except those in ``refused``, applied durably.  A refused
    change (marked for resync here) is no copy: it never counts towards a
    write's durability level (I1)."""

    VERB = "ACK"
    SCHEMA = (UInt(0, MAX_COUNTER), ListOf(SEQ, MAX_REFUSED))
    seq: int
    refused: tuple[int, ...] = ()


# --- cluster -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Epoch(Untagged):
    """Gossip of the root claim the sender follows (root election, docs/architecture.md §6)."""

    VERB = "EPOCH"
    SCHEMA = (EPOCH_T, NODE)
    epoch: int
    root: str


@dataclass(frozen=True, slots=True)
class Root(Command):
    """The root's announcement; OK means "master cache flushed, masters dropped"."""

    VERB = "ROOT"
    SCHEMA = (EPOCH_T, NODE)
    epoch: int
    root: str


@dataclass(frozen=True, slots=True)
class Route(Record):
    SCHEMA = (NODE, UInt(0, 255))
    node: str
    hops: int


@dataclass(frozen=True, slots=True)
class Routes(Untagged):
    """The sender's distance vector (replicad.cluster.routing)."""

    VERB = "ROUTES"
    SCHEMA = (ListOf(Nested(Route), 4096),)
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class MasterOk(Record):
    SCHEMA = (NODE, EPOCH_T)
    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Master(Command):
    """Who masters (user, mailbox)?  ``mailbox`` "" names the user's namespace."""

    VERB = "MASTER"
    SCHEMA = (USER, Text(0, MAX_NAME_LEN))
    REPLY = MasterOk
    user: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class MasterMove(Command):
    """Make ``node`` master of (user, mailbox); forwarded until it reaches the master."""

    VERB = "MASTER-MOVE"
    SCHEMA = (USER, Text(0, MAX_NAME_LEN), NODE)
    REPLY = MasterOk
    user: str
    mailbox: str
    node: str


# --- writes sent to the master (commands) ----------------------------------------


@dataclass(frozen=True, slots=True)
class SaveOk(Record):
    """``uidvalidity``: of the UID space the UID belongs to (RFC 4315 APPENDUID);
    after a partition the master's copy may be under another one than the
    caller's, until the resync."""

    SCHEMA = (UID, MODSEQ, NODE, UIDVALIDITY)
    uid: int
    modseq: int
    master: str  # the node that assigned the UID (lets the caller refresh its cache)
    uidvalidity: int


@dataclass(frozen=True, slots=True)
class Save(Command):
    VERB = "SAVE"
    SCHEMA = (MBOX_ID, TIME, GUID, FLAGS, BODY)
    REPLY = SaveOk
    MBOX_FIELDS = ("mbox",)
    mbox: int
    internaldate: int
    guid: bytes
    flags: tuple[str, ...]
    body: Blob  # stored form: the master keeps it as it came, once verified


@dataclass(frozen=True, slots=True)
class CopyOk(Record):
    """RFC 4315 COPYUID: the n-th UID of ``source`` was copied to the n-th of ``dest``."""

    SCHEMA = (UIDS, UIDS, MODSEQ, UIDVALIDITY)
    source: UidSet
    dest: UidSet
    modseq: int
    uidvalidity: int  # of ``dest`` (COPYUID)


@dataclass(frozen=True, slots=True)
class UidGuid(Record):
    SCHEMA = (UID, GUID)
    uid: int
    guid: bytes


#: ``((uid guid)…)|NIL``: the message GUIDs the sender sees under the UIDs it
#: names; the master refuses (NO TEMPFAIL) when it holds other messages there.
EXPECT: Final = Optional(ListOf(Nested(UidGuid), 100_000))


@dataclass(frozen=True, slots=True)
class Copy(Command):
    VERB = "COPY"
    SCHEMA = (MBOX_ID, MBOX_ID, UIDS_OR_STAR, EXPECT)
    REPLY = CopyOk
    MBOX_FIELDS = ("source", "dest")
    source: int
    dest: int
    uids: UidSet
    expect: tuple[UidGuid, ...] | None = None


@dataclass(frozen=True, slots=True)
class ExpungeOk(Record):
    SCHEMA = (Optional(UIDS), MODSEQ)
    expunged: UidSet | None
    modseq: int


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    VERB = "EXPUNGE"
    SCHEMA = (MBOX_ID, UIDS_OR_STAR, EXPECT)
    REPLY = ExpungeOk
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uids: UidSet
    expect: tuple[UidGuid, ...] | None = None


@dataclass(frozen=True, slots=True)
class StoreOk(Record):
    """``rejected``: UIDs left alone because their modseq exceeded UNCHANGEDSINCE
    (RFC 7162 §3.1.3 MODIFIED)."""

    SCHEMA = (MODSEQ, Optional(UIDS))
    modseq: int
    rejected: UidSet | None


@dataclass(frozen=True, slots=True)
class Store(Command):
    """Flag deltas, never states (I5); ``unchangedsince`` is RFC 7162 CONDSTORE."""

    VERB = "STORE"
    SCHEMA = (MBOX_ID, UIDS_OR_STAR, FLAGS, FLAGS, Optional(MODSEQ), EXPECT)
    REPLY = StoreOk
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uids: UidSet
    add: tuple[str, ...]
    remove: tuple[str, ...]
    unchangedsince: int | None
    expect: tuple[UidGuid, ...] | None = None

    def __post_init__(self) -> None:
        _check_deltas(self.add, self.remove)


@dataclass(frozen=True, slots=True)
class MailboxOk(Record):
    """The mailbox a namespace command created, renamed or deleted."""

    SCHEMA = (GUID, UIDVALIDITY)
    guid: bytes
    uidvalidity: int


@dataclass(frozen=True, slots=True)
class CreateMailbox(Command):
    """Create ``name``; sent to the master of the user's namespace (masters.NAMESPACE)."""

    VERB = "CREATE"
    SCHEMA = (USER, MAILBOX)
    REPLY = MailboxOk
    user: str
    name: str


@dataclass(frozen=True, slots=True)
class RenameMailbox(Command):
    """Rename ``old_name``; the mailbox GUID survives (seed 004 rename detection)."""

    VERB = "RENAME"
    SCHEMA = (USER, MAILBOX, MAILBOX)
    REPLY = MailboxOk
    user: str
    old_name: str
    new_name: str


@dataclass(frozen=True, slots=True)
class DeleteMailbox(Command):
    VERB = "DELETE"
    SCHEMA = (USER, MAILBOX)
    REPLY = MailboxOk
    user: str
    name: str


# --- the master's change stream (untagged, seq first) ------------------------------


@dataclass(frozen=True, slots=True)
class SaveChange(Change):
    """A new message; ``body`` may be NIL when the master knows the peer holds it."""

    VERB = "SAVE"
    SCHEMA = (
        SEQ,
        MBOX_ID,
        UIDVALIDITY,
        UID,
        GUID,
        MODSEQ,
        TIME,
        FLAGS,
        STAMP,
        SIZE,
        HASH,
        Optional(BODY),
    )
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int  # of the master's UID space: another lineage's copy refuses it (I2)
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    flags: tuple[str, ...]
    stamp: int  # of the flags' registers (I5)
    size: int
    body_hash: bytes
    body: Blob | None

    def __post_init__(self) -> None:
        _check_body_size(self.size, self.body)


@dataclass(frozen=True, slots=True)
class CopyEntry(Record):
    SCHEMA = (UID, UID, GUID, MODSEQ, TIME, FLAGS, STAMP, SIZE, HASH)
    source_uid: int
    uid: int
    guid: bytes  # kept by COPY: the same message identity in both mailboxes
    modseq: int
    internaldate: int
    flags: tuple[str, ...]
    stamp: int
    size: int
    body_hash: bytes


@dataclass(frozen=True, slots=True)
class CopyChange(Change):
    """Self-contained so a peer that expunged the source still makes the copy (I6)."""

    VERB = "COPY"
    SCHEMA = (SEQ, MBOX_ID, MBOX_ID, UIDVALIDITY, ListOf(Nested(CopyEntry)))
    MBOX_FIELDS = ("source", "dest")
    source: int
    dest: int
    uidvalidity: int  # of the destination's UID space (I2)
    entries: tuple[CopyEntry, ...]


@dataclass(frozen=True, slots=True)
class ExpungeChange(Change):
    """``guids[i]`` is the message GUID of the i-th UID (ascending): a copy
    that holds another message there diverged and must not expunge it (I6)."""

    VERB = "EXPUNGE"
    SCHEMA = (SEQ, MBOX_ID, UIDVALIDITY, UIDS, MODSEQ, ListOf(GUID, 100_000))
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uids: UidSet
    modseq: int
    guids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.guids) != self.uids.count():
            raise ValueError("one message GUID per expunged UID")


@dataclass(frozen=True, slots=True)
class StoreChange(Change):
    VERB = "STORE"
    """``guids[i]`` is the first 8 octets of the message GUID of the i-th UID
    (ascending): a copy holding another message there diverged and must not
    change it (I5, I6).  8 octets tell two random GUIDs apart but for a
    2^-64 chance, at half the bytes of a change that is otherwise ~12."""

    SCHEMA = (
        SEQ,
        MBOX_ID,
        UIDVALIDITY,
        UIDS,
        FLAGS,
        FLAGS,
        MODSEQ,
        STAMP,
        ListOf(GUID_CHECK, 100_000),
    )
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uids: UidSet
    add: tuple[str, ...]
    remove: tuple[str, ...]
    modseq: int
    stamp: int  # per-flag last writer wins after a partition (I5)
    guids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_deltas(self.add, self.remove)
        if len(self.guids) != self.uids.count():
            raise ValueError("one message GUID per changed UID")


@dataclass(frozen=True, slots=True)
class CreateChange(Change):
    """``name`` is claimed at ``stamp`` (resync.md §5)."""

    VERB = "CREATE"
    SCHEMA = (SEQ, USER, MAILBOX, GUID, UIDVALIDITY, STAMP)
    user: str
    name: str
    guid: bytes
    uidvalidity: int
    stamp: int


@dataclass(frozen=True, slots=True)
class GuidName(Record):
    SCHEMA = (GUID, MAILBOX)
    guid: bytes
    name: str


@dataclass(frozen=True, slots=True)
class RenameChange(Change):
    """The mailbox claims ``new_name`` at ``stamp``; ``children``: the
    mailboxes below it and their new claims, at the same stamp (resync.md §5)."""

    VERB = "RENAME"
    SCHEMA = (SEQ, USER, GUID, MAILBOX, MAILBOX, STAMP, ListOf(Nested(GuidName), 100_000))
    user: str
    guid: bytes
    old_name: str
    new_name: str
    stamp: int
    children: tuple[GuidName, ...]


@dataclass(frozen=True, slots=True)
class DeleteChange(Change):
    VERB = "DELETE"
    SCHEMA = (SEQ, USER, GUID, MAILBOX)
    user: str
    guid: bytes
    name: str


# --- resync --------------------------------------------------------------------


class MarkList(FieldType):
    """Per-flag registers ``((flag stamp 0|1)…)`` sorted by flag, one per flag (I5).

    ``flag`` is any system flag or keyword (normalised spelling), ``stamp``
    the hybrid-clock value of its last change, then 1 when the flag is set
    and 0 when it was cleared.
    """

    def encode(self, value: Any) -> Value:
        return [[f, stamp, 1 if present else 0] for f, stamp, present in value]

    def checker(self, name: str) -> Check:
        stamp_check = STAMP.checker(name)

        def check(value: Value) -> tuple[tuple[str, int, bool], ...]:
            if type(value) is not list or len(value) > 1000:
                raise ProtocolError(f"{name}: expected a list of flag registers")
            out: list[tuple[str, int, bool]] = []
            for item in value:
                if type(item) is not list or len(item) != 3 or type(item[0]) is not str:
                    raise ProtocolError(f"{name}: a register is (flag stamp 0|1)")
                try:
                    flag = normalise_flag(item[0])
                except BadInputError as exc:
                    raise ProtocolError(f"{name}: {exc}") from None
                if item[2] not in (0, 1) or type(item[2]) is not int:
                    raise ProtocolError(f"{name}: a register ends in 0 or 1")
                if out and out[-1][0] >= flag:
                    raise ProtocolError(f"{name}: registers not sorted by flag or repeated")
                out.append((flag, stamp_check(item[1]), item[2] == 1))
            return tuple(out)

        return check


MARKS: Final = MarkList()
#: Most entries in one ``* SYNC`` frame (keeps frames far below the maximum).
SYNC_CHUNK: Final = 512


@dataclass(frozen=True, slots=True)
class StateMessage(Record):
    """One live message of a mailbox state, as the merge needs it (resync.md)."""

    SCHEMA = (UID, GUID, MODSEQ, TIME, SIZE, HASH, MARKS)
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    size: int
    body_hash: bytes
    marks: tuple[tuple[str, int, bool], ...]


@dataclass(frozen=True, slots=True)
class StateGone(Record):
    """One tombstone: the UID, its modseq, every message GUID it ever named and
    where a UID collision moved them (``(new-uid guid)``, resync.md rule 6)."""

    SCHEMA = (UID, MODSEQ, ListOf(GUID, 64), ListOf(Nested(UidGuid), 64))
    uid: int
    modseq: int
    guids: tuple[bytes, ...]
    moved: tuple[UidGuid, ...]


@dataclass(frozen=True, slots=True)
class SyncState(Record):
    """``guid``: the mailbox the state is of.  Another GUID than the SYNC's
    binding means the receiver holds another mailbox under that name (both
    sides of a partition created it): resync.md, mailbox conflicts.
    ``rest``: the digest of the entries *not* sent (resync.md, incremental
    SYNC), by which the requester checks that it holds them too."""

    SCHEMA = (UIDVALIDITY, UID, MODSEQ, GUID, HASH, MAILBOX, STAMP)
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    guid: bytes
    rest: bytes
    #: The mailbox's name claim there and its stamp (resync.md §5).
    name: str
    stamp: int


@dataclass(frozen=True, slots=True)
class Sync(Command):
    """Send me your state of ``mbox``: every message and tombstone whose modseq
    is above ``since`` (0: all) or whose UID is in ``uids``, as ``* SYNC``
    frames; OK carries the mailbox's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ
    and the digest of the rest (QRESYNC-like, RFC 7162 §3.2)."""

    VERB = "SYNC"
    SCHEMA = (MBOX_ID, MODSEQ, Optional(UIDS))
    MBOX_FIELDS = ("mbox",)
    REPLY = SyncState
    mbox: int
    since: int
    uids: UidSet | None = None


@dataclass(frozen=True, slots=True)
class SyncData(Untagged):
    VERB = "SYNC"
    # ``mbox`` is the id the SYNC named, in the *requester's* table: a
    # reply's data, not a binding of the sender's (so no MBOX_FIELDS).
    SCHEMA = (
        MBOX_ID,
        ListOf(Nested(StateMessage), SYNC_CHUNK),
        ListOf(Nested(StateGone), SYNC_CHUNK),
    )
    mbox: int
    messages: tuple[StateMessage, ...]
    gone: tuple[StateGone, ...]


@dataclass(frozen=True, slots=True)
class ResyncItem(Record):
    """``since``: the lowest modseq at which the sender's copy may differ
    from the master's (0: unknown), a hint for an incremental SYNC."""

    SCHEMA = (USER, MAILBOX, MODSEQ)
    user: str
    name: str
    since: int


@dataclass(frozen=True, slots=True)
class Resync(Command):
    """The sender holds resync marks for these mailboxes, of which the receiver
    is the master: please SYNC them (OK at once; the work is queued).  Named,
    not by GUID: the two copies may be different mailboxes of one name."""

    VERB = "RESYNC"
    SCHEMA = (ListOf(Nested(ResyncItem), 10_000),)
    mailboxes: tuple[ResyncItem, ...]


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """Answered by one ``* FETCH`` per existing UID, then OK."""

    VERB = "FETCH"
    SCHEMA = (MBOX_ID, UIDS_OR_STAR, Pattern(re.compile("META|BODY"), "META or BODY"))
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uids: UidSet
    what: str


@dataclass(frozen=True, slots=True)
class FetchData(Untagged):
    VERB = "FETCH"
    # ``mbox``: the FETCH's id, in the requester's table (see SyncData).
    SCHEMA = (MBOX_ID, UID, GUID, MODSEQ, TIME, FLAGS, SIZE, HASH, Optional(BODY))
    mbox: int
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    flags: tuple[str, ...]
    size: int
    body_hash: bytes
    body: Blob | None

    def __post_init__(self) -> None:
        _check_body_size(self.size, self.body)


@dataclass(frozen=True, slots=True)
class Mailboxes(Command):
    """State of every mailbox of the users in these buckets (seed 004
    MAILBOXES): ``* MAILBOX``s, then OK."""

    VERB = "MAILBOXES"
    SCHEMA = (ListOf(UInt(0, 0xFFFF), 65_536),)
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MailboxData(Untagged):
    """``digest``: the mailbox's state digest (resync.md §6)."""

    VERB = "MAILBOX"
    SCHEMA = (USER, MAILBOX, GUID, UIDVALIDITY, UID, MODSEQ, U32, HASH)
    user: str
    name: str
    guid: bytes
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Digest(Command):
    """Digests of user buckets (< 65536) or groups (65536 + first octet);
    ``()`` asks for the node's whole digest (I8, resync.md §6)."""

    VERB = "DIGEST"
    SCHEMA = (ListOf(UInt(0, 0x100FF), 65_536),)
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DigestData(Untagged):
    VERB = "DIGEST"
    SCHEMA = (Optional(U32), U32, HASH)
    bucket: int | None  # NIL: the whole-cluster digest
    users: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class HashList(Record):
    SCHEMA = (ListOf(HASH),)
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Have(Command):
    """Which of these bodies does the receiver hold?  OK lists the present ones."""

    VERB = "HAVE"
    SCHEMA = (ListOf(HASH),)
    REPLY = HashList
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Reserve(Command):
    """Like HAVE, and pins the present bodies for this link until UPDATE or close
    (seed 004 RESERVE), scanning the listed mailboxes first."""

    VERB = "RESERVE"
    SCHEMA = (ListOf(GUID, 10_000), ListOf(HASH))
    REPLY = HashList
    mailboxes: tuple[bytes, ...]
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class UpdateAppend(Record):
    """Put a message at ``uid`` (new, or moved here by a conflict resolution)."""

    VERB = "APPEND"
    SCHEMA = (UID, GUID, MODSEQ, TIME, SIZE, HASH, MARKS, Optional(BODY))
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    size: int
    body_hash: bytes
    marks: tuple[tuple[str, int, bool], ...]
    body: Blob | None  # NIL: the receiver holds the body (HAVE)

    def __post_init__(self) -> None:
        _check_body_size(self.size, self.body)


@dataclass(frozen=True, slots=True)
class UpdateFlags(Record):
    """The registers the master's merge decided (resync ships results; live
    changes ship deltas, I5) for the message the receiver holds at ``uid``."""

    VERB = "FLAGS"
    SCHEMA = (UID, MODSEQ, MARKS)
    uid: int
    modseq: int
    marks: tuple[tuple[str, int, bool], ...]


@dataclass(frozen=True, slots=True)
class UpdateExpunge(Record):
    """Tombstone ``uid`` (removing a live message there), naming every GUID it had (I3)."""

    VERB = "EXPUNGE"
    SCHEMA = (UID, MODSEQ, ListOf(GUID, 64), ListOf(Nested(UidGuid), 64))
    uid: int
    modseq: int
    guids: tuple[bytes, ...]
    moved: tuple[UidGuid, ...]


UpdateOp = UpdateAppend | UpdateFlags | UpdateExpunge
UPDATE_OPS: Final = ListOf(OneOf(UpdateAppend, UpdateFlags, UpdateExpunge), 100_000)


@dataclass(frozen=True, slots=True)
class Update(Command):
    """All changes bringing one mailbox to the merged state, applied in one
    transaction (seed 004 UPDATE).  Applied only if the receiver's
    HIGHESTMODSEQ still equals ``expected``, else NO CONFLICT."""

    VERB = "UPDATE"
    SCHEMA = (
        MBOX_ID,
        UIDVALIDITY,
        UID,
        MODSEQ,
        MODSEQ,
        Optional(GUID),
        UPDATE_OPS,
        MAILBOX,
        STAMP,
    )
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    expected: int
    #: The receiver's mailbox of that GUID, holding the name, is merged into
    #: this one and goes (its HIGHESTMODSEQ is ``expected``).
    replaces: bytes | None
    ops: tuple[UpdateOp, ...]
    #: The mailbox's name claim after the merge and its stamp: the receiver
    #: takes it if newer than its own, and creates a missing mailbox with
    #: it (resync.md §5).
    name: str
    stamp: int


@dataclass(frozen=True, slots=True)
class UpdateChange(Change):
    """The master applied a merge to its own copy: its followers that hold
    the state it merged from (``expected_digest``) apply the same ops."""

    VERB = "UPDATE"
    SCHEMA = (SEQ, MBOX_ID, UIDVALIDITY, UID, MODSEQ, MODSEQ, HASH, HASH, UPDATE_OPS)
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    expected: int
    expected_digest: bytes  # state digest the plan applies to (resync.md)
    result_digest: bytes  # state digest it produces
    ops: tuple[UpdateOp, ...]


# --- frames ----------------------------------------------------------------------


class Status(Enum):
    OK = "OK"
    NO = "NO"
    BAD = "BAD"


#: NO codes (verbs.md §"NO codes").  Unknown codes are accepted: they are atoms.
NO_CODES: Final = frozenset(
    {
        "NOTMASTER",
        "NONEXISTENT",
        "DELETED",
        "UIDVALIDITY",
        "CONFLICT",
        "TEMPFAIL",
        "DURABILITY",
        "UNREACHABLE",
        "UNSUPPORTED",
        "OVERQUOTA",
    }
)

COMMANDS: Final[dict[str, type[Command]]] = {
    c.VERB: c
    for c in (
        Ping,
        Compress,
        Mbox,
        Root,
        Master,
        MasterMove,
        Save,
        Copy,
        Expunge,
        Store,
        CreateMailbox,
        RenameMailbox,
        DeleteMailbox,
        Sync,
        Fetch,
        Mailboxes,
        Digest,
        Have,
        Reserve,
        Update,
        Resync,
    )
}
UNTAGGED_RECORDS: Final[dict[str, type[Untagged]]] = {
    u.VERB: u
    for u in (
        Hello,
        Fatal,
        Ack,
        Epoch,
        Routes,
        SaveChange,
        CopyChange,
        ExpungeChange,
        StoreChange,
        CreateChange,
        RenameChange,
        DeleteChange,
        UpdateChange,
        SyncData,
        FetchData,
        MailboxData,
        DigestData,
    )
}


@dataclass(frozen=True, slots=True)
class CommandFrame:
    tag: str
    command: Command


@dataclass(frozen=True, slots=True)
class UntaggedFrame:
    data: Untagged


@dataclass(frozen=True, slots=True)
class ReplyFrame:
    """A tagged reply.  ``fields`` is the OK payload (typed by :func:`decode_ok`),
    or ``[code, text]`` for NO, or ``[text]`` for BAD."""

    tag: str
    status: Status
    fields: tuple[Value, ...]

    @property
    def code(self) -> str | None:
        return str(self.fields[0]) if self.status is Status.NO else None

    @property
    def text(self) -> str:
        return "" if self.status is Status.OK else str(self.fields[-1])


Message = CommandFrame | UntaggedFrame | ReplyFrame

_check_tag: Final = Pattern(_TAG_RE, "a tag of 1..16 characters [A-Za-z0-9.]").checker("tag")
_check_code: Final = ATOM.checker("code")
_check_text: Final = REASON.checker("text")
_STATUSES: Final = {s.value: s for s in Status}
# Built at import, not on first use: a record class whose checkers cannot be
# built (SCHEMA out of step with its fields) fails loudly here.
_COMMAND_DECODERS: Final = {verb: record_decoder(cls) for verb, cls in COMMANDS.items()}
_UNTAGGED_DECODERS: Final = {verb: record_decoder(cls) for verb, cls in UNTAGGED_RECORDS.items()}


_set_frame_tag: Final = _slot_setter(CommandFrame, "tag")
_set_frame_command: Final = _slot_setter(CommandFrame, "command")


def _command_frame(tag: str, command: Command) -> CommandFrame:
    """``CommandFrame(tag, command)`` without the generic frozen ``__init__``
    (decode() builds one per received command)."""
    message = object.__new__(CommandFrame)
    _set_frame_tag(message, tag)
    _set_frame_command(message, command)
    return message


def decode(frame: Frame) -> Message:
    """Type a frame (as returned by the frame decoder) or raise :class:`ProtocolError`.

    ``frame`` is a list of at least two values (what FrameDecoder and the
    text parser guarantee); this checks all of them: the tag (``*`` or
    1..16 of ``[A-Za-z0-9.]``), the verb (a known one), and every field
    against the verb's schema (:func:`record_decoder`).
    """
    try:
        tag, verb = frame[0], frame[1]
    except IndexError:
        raise ProtocolError("frame has no verb") from None
    if type(tag) is not str or type(verb) is not str:
        raise ProtocolError("frame tag or verb is not a string")
    fields = frame[2:]
    if tag == UNTAGGED:
        decode_untagged = _UNTAGGED_DECODERS.get(verb)
        if decode_untagged is None:
            raise ProtocolError(f"unknown untagged verb {verb!r}")
        return UntaggedFrame(decode_untagged(fields))
    # Counter tags ("k2p") are alphanumeric; the regex is for the rest.
    if not (len(tag) <= MAX_TAG_LEN and tag.isascii() and tag.isalnum()):
        _check_tag(tag)
    status = _STATUSES.get(verb)
    if status is not None:
        if status is Status.NO:
            if len(fields) != 2:
                raise ProtocolError("NO: expected a code and a text")
            _check_code(fields[0])
            _check_text(fields[1])
        elif status is Status.BAD:
            if len(fields) != 1:
                raise ProtocolError("BAD: expected a text")
            _check_text(fields[0])
        return ReplyFrame(tag, status, tuple(fields))
    decode_command = _COMMAND_DECODERS.get(verb)
    if decode_command is None:
        raise ProtocolError(f"unknown verb {verb!r}")
    return _command_frame(tag, decode_command(fields))


def decode_ok(command: type[Command], reply: ReplyFrame) -> Record:
    """The typed OK payload of ``reply``, answering a ``command``."""
    if reply.status is not Status.OK:
        raise ProtocolError(f"{reply.status.value} has no OK payload")
    return command.REPLY.from_fields(reply.fields)


def encode_command(tag: str, command: Command) -> Frame:
    return [tag, command.VERB, *command.to_fields()]


def encode_untagged(data: Untagged) -> Frame:
    return [UNTAGGED, data.VERB, *data.to_fields()]


def encode_ok(tag: str, payload: Record | None = None) -> Frame:
    return [tag, "OK", *(payload.to_fields() if payload is not None else ())]


def encode_no(tag: str, code: str, text: str) -> Frame:
    return [tag, "NO", code, text]


def encode_bad(tag: str, text: str) -> Frame:
    return [tag, "BAD", text]


def mbox_ids(record: Record) -> list[int]:
    """The session-local mailbox ids ``record`` references."""
    return [getattr(record, name) for name in record.MBOX_FIELDS]


ALL_RECORDS: Final[tuple[type[Record], ...]] = (
    *COMMANDS.values(),
    *UNTAGGED_RECORDS.values(),
    *{c.REPLY for c in COMMANDS.values()},
    Route,
    UidGuid,
    ResyncItem,
    CopyEntry,
    StateMessage,
    StateGone,
    UpdateAppend,
    UpdateFlags,
    UpdateExpunge,
)
