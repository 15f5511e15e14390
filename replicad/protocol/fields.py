"""Field types of the wire records, and the shared field constants (protocol-spec/verbs.md).

A field type turns a value into its wire form (``encode``) and builds the
checker that turns a received wire value back, raising
:class:`~replicad.errors.ProtocolError` naming the field for anything out
of type or range (I9).  The constants (``UID``, ``MODSEQ``, ``FLAGS``,
``MARKS``…) are the field types every record family shares, so that one
quantity has one range everywhere on the wire.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
from collections.abc import Callable
from typing import Any, Final

from replicad.blob import MAX_BODY, Blob
from replicad.errors import BadInputError, ProtocolError
from replicad.flags import SYSTEM_FLAGS, normalise_flag
from replicad.protocol.frames import DEFAULT_MAX_FRAME, Value
from replicad.uidset import MAX_UID, UidSet

MAX_U16: Final = 2**16 - 1
MAX_U32: Final = 2**32 - 1
MAX_U63: Final = 2**63 - 1  # MODSEQ range of RFC 7162 §3.1.1 (63-bit)
MAX_NAME_LEN: Final = 1024  # user and mailbox names, in characters
MAX_TEXT_LEN: Final = 4096  # NO / BAD reasons
MAX_LIST: Final = 100_000  # entries in one list field (SYNC, HAVE, UPDATE...)
MAX_TAG_LEN: Final = 16


_NODE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ATOM_RE: Final = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,31}")


def slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
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


def check_body_size(size: int, body: Blob | None) -> None:
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
    set_ranges = slot_setter(UidSet, "ranges")
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
SUBSCRIBED: Final = UInt(0, 1)  # an IMAP subscription register: 1 subscribed, 0 not
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


def check_deltas(add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """STORE's cross-field rule: no flag is both added and removed (I5)."""
    # Most deltas touch one side only; skip building sets for them.
    if add and remove and not set(add).isdisjoint(remove):
        raise ValueError("a flag is both added and removed")


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
