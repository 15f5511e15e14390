"""The mail index: store operations as plain functions of an LMDB transaction.

:class:`MailIndex` is deterministic and does no I/O of its own; the async
facade :class:`replicad.store.mailstore.MailStore` runs its operations through
the group-commit writer or a read transaction, off the event loop.

Every write is one transaction and returns one change record
(:mod:`replicad.store.records`).  Invariants upheld here:

- I2/I3: a mailbox's UIDNEXT only grows and every expunged UID leaves a
  tombstone (uid, message guid, modseq), so a UID is never reused;
  HIGHESTMODSEQ grows by one with every operation that changes the mailbox,
  and every message touched by that operation carries the new value
  (RFC 7162 §3.1.1: several messages may share one mod-sequence).
- I5: STORE produces +added/−removed deltas, never flag states.
- Single-instance bodies: COPY adds a reference, never a second body.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from replicad.blob import Blob
from replicad.errors import (
    AlreadyExistsError,
    BadInputError,
    ConflictError,
    NoSuchMailboxError,
    NoSuchMessageError,
    NoSuchUserError,
    UidNotAboveError,
)
from replicad.flags import normalise_flags
from replicad.store import blobs
from replicad.store.blobs import PreparedBody
from replicad.store.clock import HybridClock
from replicad.store.marks import apply_delta, present, stamped
from replicad.store.namespace import Claim, effective_names
from replicad.store.records import (
    ChangeSet,
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxRenamed,
    MailboxStatus,
    MessageAppended,
    MessageInfo,
    MessagesCopied,
    MessagesExpunged,
    flags_tuple,
)
from replicad.store.schema import (
    CHANGE_EXPUNGED,
    CHANGE_MESSAGE,
    Databases,
    MailboxRow,
    MessageRow,
    change_key,
    message_key,
    name_key,
    pack,
    pack_u64,
    split_change_key,
    uid_of_message_key,
    unpack_tombstone,
    unpack_u64,
    user_prefix,
)
from replicad.uidset import MAX_UID, UidSet

T = TypeVar("T")
log = logging.getLogger("replicad.store")
FlagMode = Literal["add", "remove", "replace"]

INBOX = "INBOX"
SEPARATOR = "/"
MAX_NAME_BYTES = 1024
MAX_USER_BYTES = 255
MAX_MODSEQ = (1 << 63) - 1  # RFC 7162: mod-sequences are 63-bit
CLOCK_KEY = b"clock"  # meta: the hybrid clock's high-water mark (replicad.store.clock)


# --- names ------------------------------------------------------------------


def check_user(user: str) -> str:
    """Validate a user name: 1..255 bytes, no whitespace or control characters."""
    raw = user.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_USER_BYTES:
        raise BadInputError(f"bad user name {user!r}: must be 1..{MAX_USER_BYTES} bytes")
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in user):
        raise BadInputError(f"bad user name {user!r}: whitespace or control characters")
    return user


def check_mailbox_name(name: str) -> str:
    """Validate and canonicalise a mailbox name ("/" separates levels; INBOX is caseless)."""
    if not name:
        raise BadInputError("empty mailbox name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadInputError(f"mailbox name longer than {MAX_NAME_BYTES} bytes")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        raise BadInputError(f"bad mailbox name {name!r}: control characters")
    parts = name.split(SEPARATOR)
    if any(not p for p in parts):
        raise BadInputError(f"bad mailbox name {name!r}: empty level (leading, trailing or '//')")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX  # RFC 3501 §5.1: INBOX is case-insensitive
    return SEPARATOR.join(parts)


# --- requests ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One message to append; ``guid`` lets a caller retry idempotently (random if absent).

    ``body``: the raw body, or its stored form as a SAVE carried it (kept as
    it came once verified, :meth:`PreparedBody.of`)."""

    body: bytes | Blob
    flags: tuple[str, ...] = ()
    internaldate: int | None = None
    guid: bytes | None = None
    #: The UID to append at (a migration keeping the source's UIDs); it must
    #: be at or above the mailbox's UIDNEXT (I3).  None: the next UID.
    uid: int | None = None


#: How long after a delivery the same delivery arriving again (same user,
#: mailbox, sender and message octets: the MTA's retry of a message it was
#: told to send again) is answered with the first copy instead of a second.
DELIVERY_RETRY_WINDOW = 24 * 3600


def delivery_guid(user: str, mailbox: str, message_key: bytes) -> bytes:
    """The message GUID of a delivery, derived from what it is, not random:
    ``message_key`` names the message as the MTA sent it (LMTP: a hash of
    the sender and the octets, before the trace headers).  A retry of the
    delivery gets the same GUID, so the master recognises it as it
    recognises a retried SAVE (:meth:`MailIndex.recent_save`).

    The 16 octets are a UUID version 8 (RFC 9562, custom), which random
    (version 4) GUIDs never are: :func:`is_delivery_guid`.
    """
    digest = hashlib.sha256(
        b"replicad delivery guid v1\0"
        + user.encode("utf-8", "surrogateescape")
        + b"\0"
        + mailbox.encode("utf-8", "surrogateescape")
        + b"\0"
        + message_key
    ).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10
    return bytes(raw)


def is_delivery_guid(guid: bytes) -> bool:
    """Whether ``guid`` has the form :func:`delivery_guid` gives.  A GUID of
    ``os.urandom`` may have it too (1 in 64): such a save is then only looked
    for among recent saves by GUID, which finds nothing."""
    return len(guid) == 16 and guid[6] >> 4 == 8 and guid[8] >> 6 == 2


def retry_within_window(internaldate: int) -> Callable[[MessageAppended], bool]:
    """For a delivery arriving at ``internaldate``: whether an earlier copy
    with its GUID is this delivery again (it came at most
    :data:`DELIVERY_RETRY_WINDOW` before), or a new delivery of the same
    octets much later, which gets its own copy.  A copy expunged since
    (its record has no date) counts as the first delivery."""

    def accept(earlier: MessageAppended) -> bool:
        return earlier.internaldate == 0 or (
            internaldate - earlier.internaldate <= DELIVERY_RETRY_WINDOW
        )

    return accept


@dataclass(frozen=True, slots=True)
class _PreparedAppend:
    prepared: PreparedBody
    flags: tuple[str, ...]
    internaldate: int
    guid: bytes
    uid: int | None = None


def _admit(item: AppendRequest) -> AppendRequest:
    """``item`` checked, with its internal date (arrival time) and GUID fixed
    now, when the request arrives, whenever its body is prepared."""
    flags = flags_tuple(normalise_flags(item.flags))
    date = int(time.time()) if item.internaldate is None else item.internaldate
    if not 0 <= date < 1 << 63:
        raise BadInputError(f"internal date {date} out of range")
    guid = item.guid if item.guid is not None else os.urandom(16)
    if len(guid) != 16:
        raise BadInputError("message guid must be 16 bytes")
    if item.uid is not None and not 0 < item.uid <= MAX_UID:
        raise BadInputError(f"UID {item.uid} out of range")
    return AppendRequest(item.body, flags, date, guid, item.uid)


def _prepare(item: AppendRequest) -> _PreparedAppend:
    admitted = _admit(item)
    assert admitted.internaldate is not None and admitted.guid is not None
    return _PreparedAppend(
        PreparedBody.of(admitted.body),
        admitted.flags,
        admitted.internaldate,
        admitted.guid,
        admitted.uid,
    )


# --- the index: operations on a transaction --------------------------------


class MailIndex:
    """Store operations as functions of an open LMDB transaction.

    Write methods take a write transaction and return a change record; they
    raise a :class:`~replicad.errors.ReplicadError` before writing anything
    when the request is invalid, so the caller's transaction can be rolled
    back without side effects.
    """

    def __init__(self, dbs: Databases, clock: HybridClock | None = None) -> None:
        self.dbs = dbs
        #: Stamps flag registers; only the single writer uses it (I5).
        self.clock = clock if clock is not None else HybridClock()
        self._saved_clock = -1  # the high-water mark last written to ``meta``

    # -- the clock across restarts (replicad.store.clock) --

    def load_clock(self, txn: Any) -> int:
        """Start the clock above every stamp this store holds: the persisted
        high-water mark, or (a store written before it was kept) the
        highest stamp of any flag register, found once by a scan; but never
        more than ``max_skew`` ahead of the wall clock (see below)."""
        raw = txn.get(CLOCK_KEY, db=self.dbs.meta)
        if raw is not None:
            floor = unpack_u64(bytes(raw))
        else:
            floor = 0
            with txn.cursor(db=self.dbs.messages) as cur:
                for _, value in cur:
                    marks = MessageRow.decode(bytes(value)).marks
                    floor = max([floor, *(stamp for _, stamp, _ in marks)])
        ceiling = self.clock.ceiling()
        if floor > ceiling:
            # The stamps were made by a wall clock that ran ahead and was set
            # right since.  Starting above them would stamp every new change
            # ahead too, and every peer would refuse it until real time caught
            # up.  Registers written then keep their stamps; a client's change
            # to one still wins over it (store_flags stamps after the registers
            # it replaces), and peers take them once real time reaches them.
            log.error(
                "event=clock-ahead high_water_ahead_s=%.0f max_clock_skew_s=%g "
                "detail=%r",
                self.clock.ahead_of_wall(floor),
                self.clock.max_skew,
                "this store holds stamps from a clock that ran ahead; peers refuse "
                "changes to those messages until real time reaches them",
            )
            floor = ceiling
        self.clock.restore(floor)
        self._saved_clock = floor if raw is not None else -1
        return floor

    def save_clock(self, txn: Any) -> None:
        """Persist the clock's high-water mark in the transaction that moved
        it (the group commit calls this before every commit): a restarted
        node never stamps below a stamp it wrote or accepted."""
        high = self.clock.high_water
        if high != self._saved_clock:
            txn.put(CLOCK_KEY, pack_u64(high), db=self.dbs.meta)
            self._saved_clock = high

    # -- lookups --

    def _mailbox_guid(self, txn: Any, user: str, name: str) -> bytes:
        guid = txn.get(name_key(user, name), db=self.dbs.names)
        if guid is None:
            if not self._user_exists(txn, user):
                raise NoSuchUserError(f"no such user {user!r}")
            raise NoSuchMailboxError(f"no such mailbox {name!r} for user {user!r}")
        return bytes(guid)

    def has_mailbox(self, txn: Any, user: str, name: str) -> bool:
        return txn.get(name_key(user, name), db=self.dbs.names) is not None

    def has_user(self, txn: Any, user: str) -> bool:
        """Whether ``user`` has any mailbox here."""
        return self._user_exists(txn, check_user(user))

    def _user_exists(self, txn: Any, user: str) -> bool:
        prefix = user_prefix(user)
        with txn.cursor(db=self.dbs.names) as cur:
            return bool(cur.set_range(prefix)) and bytes(cur.key()).startswith(prefix)

    def _row(self, txn: Any, guid: bytes) -> MailboxRow:
        raw = txn.get(guid, db=self.dbs.mailboxes)
        if raw is None:
            raise NoSuchMailboxError(f"mailbox {guid.hex()} vanished")
        return MailboxRow.decode(raw)

    def _resolve(self, txn: Any, user: str, name: str) -> tuple[bytes, MailboxRow]:
        guid = self._mailbox_guid(txn, check_user(user), check_mailbox_name(name))
        return guid, self._row(txn, guid)

    def _message(self, txn: Any, guid: bytes, uid: int) -> MessageRow | None:
        raw = txn.get(message_key(guid, uid), db=self.dbs.messages)
        return None if raw is None else MessageRow.decode(raw)

    def _uids_in(self, txn: Any, guid: bytes, uids: UidSet, uidnext: int) -> list[int]:
        """Existing UIDs of the mailbox that ``uids`` names, ascending (``*`` resolved)."""
        highest = self._highest_uid(txn, guid)
        resolved = uids.resolve(highest)
        out: list[int] = []
        with txn.cursor(db=self.dbs.messages) as cur:
            for lo, hi in resolved.ranges:
                hi = min(hi, uidnext - 1, MAX_UID)
                if lo > hi or not cur.set_range(message_key(guid, lo)):
                    continue
                for key in cur.iternext(keys=True, values=False):
                    key = bytes(key)
                    if key[:16] != guid:
                        break
                    uid = uid_of_message_key(key)
                    if uid > hi:
                        break
                    out.append(uid)
        return out

    def _highest_uid(self, txn: Any, guid: bytes) -> int:
        with txn.cursor(db=self.dbs.messages) as cur:
            if cur.set_range(message_key(guid, MAX_UID)):
                key = bytes(cur.key())
                if key[:16] == guid:
                    return uid_of_message_key(key)
                if not cur.prev():
                    return 0
            elif not cur.last():
                return 0
            key = bytes(cur.key())
            return uid_of_message_key(key) if key[:16] == guid else 0

    def _next_uidvalidity(self, txn: Any) -> int:
        # Time-based like most IMAP servers, but strictly increasing per node so
        # a mailbox deleted and re-created within a second still gets a new one.
        raw = txn.get(b"last_uidvalidity", db=self.dbs.meta)
        last = 0 if raw is None else unpack_u64(raw)
        value = max(int(time.time()) & 0xFFFFFFFF, last + 1)
        if value > 0xFFFFFFFF:
            value = 1  # wrapped after 2106; uniqueness per name is what matters
        txn.put(b"last_uidvalidity", pack_u64(value), db=self.dbs.meta)
        return value

    # -- reads --

    def status(self, txn: Any, user: str, name: str) -> MailboxStatus:
        guid, row = self._resolve(txn, user, name)
        return _status(guid, row)

    def list_mailboxes(self, txn: Any, user: str) -> list[MailboxStatus]:
        check_user(user)
        prefix = user_prefix(user)
        out = []
        with txn.cursor(db=self.dbs.names) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    if not bytes(key).startswith(prefix):
                        break
                    out.append(_status(bytes(value), self._row(txn, bytes(value))))
        if not out:
            raise NoSuchUserError(f"no such user {user!r}")
        return sorted(out, key=lambda s: (s.name != INBOX, s.name))

    def list_users(self, txn: Any) -> list[str]:
        users: list[str] = []
        with txn.cursor(db=self.dbs.names) as cur:
            for key in cur.iternext(keys=True, values=False):
                user = bytes(key).split(b"\0", 1)[0].decode()
                if not users or users[-1] != user:
                    users.append(user)
        return users

    def logical_state(self, txn: Any) -> list[tuple[Any, ...]]:
        """Everything I4 says must converge, as plain sorted tuples (for checks and digests).

        One tuple per mailbox: (user, name, guid, uidvalidity, uidnext,
        highestmodseq, messages, vsize, [(uid, guid, modseq, flags,
        internaldate, size, body hash)...], [(uid, guid, modseq) tombstones]).
        """
        out: list[tuple[Any, ...]] = []
        for key, guid in txn.cursor(db=self.dbs.names):
            user, name = bytes(key).decode().split("\0", 1)
            status = self.status(txn, user, name)
            msgs = [
                (m.uid, m.guid, m.modseq, m.flags, m.internaldate, m.size, m.body_hash)
                for m in self.fetch(txn, user, name, UidSet.parse("all"))
            ]
            tombs = self.tombstones(txn, user, name)
            out.append(
                (
                    user,
                    name,
                    bytes(guid),
                    status.uidvalidity,
                    status.uidnext,
                    status.highestmodseq,
                    status.messages,
                    status.vsize,
                    msgs,
                    tombs,
                )
            )
        return out

    def fetch(self, txn: Any, user: str, name: str, uids: UidSet) -> list[MessageInfo]:
        guid, row = self._resolve(txn, user, name)
        out = []
        for uid in self._uids_in(txn, guid, uids, row.uidnext):
            msg = self._message(txn, guid, uid)
            assert msg is not None
            out.append(_info(uid, msg))
        return out

    def fetch_body(self, txn: Any, user: str, name: str, uid: int) -> bytes:
        guid, _ = self._resolve(txn, user, name)
        msg = self._message(txn, guid, uid)
        if msg is None:
            raise NoSuchMessageError(f"no message with UID {uid} in {name!r}")
        return blobs.read_body(txn, self.dbs, msg.body_hash)

    def fetch_bodies(
        self, txn: Any, user: str, name: str, uids: Iterable[int]
    ) -> dict[int, bytes]:
        """The bodies of those of ``uids`` that exist, in one read transaction."""
        guid, _ = self._resolve(txn, user, name)
        out = {}
        for uid in uids:
            raw = txn.get(message_key(guid, uid), db=self.dbs.messages)
            if raw is not None:
                out[uid] = blobs.read_body(txn, self.dbs, MessageRow.body_hash_of(raw))
        return out

    def changes_since(self, txn: Any, user: str, name: str, modseq: int) -> ChangeSet:
        """Messages changed and UIDs expunged after ``modseq`` (RFC 7162 §3.1.4, §3.2.5)."""
        if modseq < 0:
            raise BadInputError("modseq must be >= 0")
        guid, row = self._resolve(txn, user, name)
        changed: list[MessageInfo] = []
        vanished: list[int] = []
        with txn.cursor(db=self.dbs.changes) as cur:
            if cur.set_range(change_key(guid, min(modseq, MAX_MODSEQ) + 1, 0)):
                for key, kind in cur:
                    key = bytes(key)
                    if key[:16] != guid:
                        break
                    _, uid = split_change_key(key)
                    if bytes(kind) == CHANGE_EXPUNGED:
                        vanished.append(uid)
                    else:
                        msg = self._message(txn, guid, uid)
                        assert msg is not None, "change index points at a missing message"
                        changed.append(_info(uid, msg))
        changed.sort(key=lambda m: m.uid)
        vanished.sort()
        return ChangeSet(row.highestmodseq, tuple(changed), tuple(vanished))

    # -- mailbox writes --

    def create_mailbox(
        self,
        txn: Any,
        user: str,
        name: str,
        *,
        guid: bytes | None = None,
        uidvalidity: int | None = None,
        stamp: int | None = None,
    ) -> MailboxCreated:
        """Create ``name`` for ``user``.  A client's create (no ``guid``) needs
        the name free; a replicated one (``guid`` and the claim's ``stamp``)
        only needs INBOX free: another claimant of a folder name is shown
        under a derived name (:meth:`settle_names`)."""
        check_user(user)
        name = check_mailbox_name(name)
        key = name_key(user, name)
        if (guid is None or name == INBOX) and txn.get(key, db=self.dbs.names) is not None:
            raise AlreadyExistsError(f"mailbox {name!r} already exists for user {user!r}")
        guid = guid if guid is not None else os.urandom(16)
        uidvalidity = uidvalidity if uidvalidity is not None else self._next_uidvalidity(txn)
        if stamp is None:
            stamp = self.clock.now()
        elif self.clock.admits(stamp):  # a claim from a clock far ahead is kept, not followed
            self.clock.observe(stamp)
        row = MailboxRow(
            user,
            name,
            uidvalidity,
            uidnext=1,
            highestmodseq=1,
            messages=0,
            vsize=0,
            claim=name,
            name_stamp=stamp,
        )
        txn.put(guid, row.encode(), db=self.dbs.mailboxes)
        self.settle_names(txn, user, [guid])
        return MailboxCreated(
            user=user, name=name, mailbox=guid, uidvalidity=uidvalidity, stamp=stamp
        )

    def delete_mailbox(self, txn: Any, user: str, name: str) -> MailboxDeleted:
        """Delete the mailbox and its messages; its inferiors stay (RFC 3501
        §6.3.4, replicad.store.hierarchy).  A name that only stands above
        other mailboxes is not a mailbox: deleting it is an error."""
        if not self.has_mailbox(txn, check_user(user), check_mailbox_name(name)):
            below = self._first_inferior(txn, user, check_mailbox_name(name))
            if below is not None:
                raise NoSuchMailboxError(
                    f"{name!r} is not a mailbox of user {user!r}, only the superior of "
                    f"{below!r} (\\Noselect): delete the mailboxes below it first"
                )
        guid, row = self._resolve(txn, user, name)
        if row.name == INBOX:
            raise BadInputError("INBOX cannot be deleted")
        self._drop_prefix(txn, self.dbs.messages, guid, on_value=self._release_message)
        self._drop_prefix(txn, self.dbs.changes, guid)
        self._drop_prefix(txn, self.dbs.tombstones, guid)
        txn.delete(name_key(row.user, row.name), db=self.dbs.names)
        txn.delete(guid, db=self.dbs.mailboxes)
        # Remembered for good (a few bytes): a DELETE wins over writes made
        # concurrently elsewhere, so no change, resync or anti-entropy repair
        # may bring this mailbox back (resync.md, mailbox conflicts; I4).
        txn.put(guid, pack([row.user, row.name]), db=self.dbs.deleted)
        self.settle_names(txn, row.user)  # a claimant it outranked takes the name
        return MailboxDeleted(user=row.user, mailbox=guid, name=row.name)

    def _first_inferior(self, txn: Any, user: str, name: str) -> str | None:
        prefix = name_key(user, name + SEPARATOR)
        with txn.cursor(db=self.dbs.names) as cur:
            if cur.set_range(prefix) and bytes(cur.key()).startswith(prefix):
                return bytes(cur.key()).split(b"\0", 1)[1].decode()
        return None

    def was_deleted(self, txn: Any, guid: bytes) -> bool:
        """Whether the mailbox with this GUID was deleted here."""
        return txn.get(guid, db=self.dbs.deleted) is not None

    def _release_message(self, txn: Any, raw: bytes) -> None:
        blobs.drop_reference(txn, self.dbs, MessageRow.decode(raw).body_hash)

    def _drop_prefix(
        self,
        txn: Any,
        db: Any,
        prefix: bytes,
        on_value: Callable[[Any, bytes], None] | None = None,
    ) -> None:
        with txn.cursor(db=db) as cur:
            if not cur.set_range(prefix):
                return
            while bytes(cur.key()).startswith(prefix):
                if on_value is not None:
                    on_value(txn, bytes(cur.value()))
                if not cur.delete():
                    break
                if not cur.key():  # cursor ran off the end
                    break

    def rename_mailbox(self, txn: Any, user: str, old: str, new: str) -> MailboxRenamed:
        """Rename ``old`` to ``new`` with its children (RFC 3501 §6.3.5); GUIDs stay.

        Each moved mailbox claims its new name at one new stamp, which wins
        over every claim this node has seen (replicad.store.namespace)."""
        guid, row = self._resolve(txn, user, old)
        new = check_mailbox_name(new)
        if row.name == INBOX:
            raise BadInputError("INBOX cannot be renamed")
        if new == INBOX or new.startswith(INBOX + SEPARATOR):
            raise BadInputError("no mailbox can be renamed to INBOX or below it")
        if new == row.name:
            raise AlreadyExistsError(f"mailbox {new!r} already exists")
        if new.startswith(row.name + SEPARATOR):
            raise BadInputError(f"cannot rename {row.name!r} into its own child {new!r}")
        moves = [(row.name, new, guid)]
        child_prefix = name_key(row.user, row.name + SEPARATOR)
        with txn.cursor(db=self.dbs.names) as cur:
            if cur.set_range(child_prefix):
                for key, value in cur:
                    key = bytes(key)
                    if not key.startswith(child_prefix):
                        break
                    child = key.split(b"\0", 1)[1].decode()
                    moves.append((child, new + child[len(row.name) :], bytes(value)))
        for _, target, _ in moves:
            if txn.get(name_key(row.user, target), db=self.dbs.names) is not None:
                raise AlreadyExistsError(f"mailbox {target!r} already exists")
        # Above the claims it replaces, even if this node's clock went back
        # since they were made (replicad.store.clock): the rename must win.
        stamp = self.clock.after(max(self._row(txn, mbox).name_stamp for _, _, mbox in moves))
        for _, target, mbox in moves:
            moved = self._row(txn, mbox)
            txn.put(
                mbox, replace(moved, claim=target, name_stamp=stamp).encode(), db=self.dbs.mailboxes
            )
        self.settle_names(txn, row.user)
        return MailboxRenamed(
            user=row.user,
            mailbox=guid,
            old_name=row.name,
            new_name=new,
            stamp=stamp,
            children=tuple((mbox, target) for _, target, mbox in moves[1:]),
        )

    def adopt_claims(self, txn: Any, user: str, claims: Sequence[tuple[bytes, Claim]]) -> bool:
        """Take each ``(guid, claim)`` that is newer than the claim held here
        (last writer wins; a GUID not here is skipped), then settle the
        names; whether any claim changed."""
        changed = False
        for guid, claim in claims:
            raw = txn.get(guid, db=self.dbs.mailboxes)
            if raw is None:
                continue
            row = MailboxRow.decode(bytes(raw))
            if row.user != user or claim <= row.claimed:
                continue
            if self.clock.admits(claim.stamp):
                self.clock.observe(claim.stamp)
            txn.put(
                guid,
                replace(row, claim=claim.name, name_stamp=claim.stamp).encode(),
                db=self.dbs.mailboxes,
            )
            changed = True
        if changed:
            self.settle_names(txn, user)
        return changed

    def settle_names(self, txn: Any, user: str, extra: Sequence[bytes] = ()) -> None:
        """Show every mailbox of ``user`` under its effective name
        (:func:`~replicad.store.namespace.effective_names` of their claims):
        the ``names`` table and each row's ``name`` follow the claims.
        ``extra``: rows already written whose names are not in the table yet."""
        held: dict[bytes, str] = {}  # guid -> the name the table has for it
        prefix = user_prefix(user)
        with txn.cursor(db=self.dbs.names) as cur:
            if cur.set_range(prefix):
                for key, value in cur:
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    held[bytes(value)] = key[len(prefix) :].decode()
        rows = {g: self._row(txn, g) for g in (*held, *extra)}
        shown = effective_names({g: r.claimed for g, r in rows.items()})
        moved = [g for g in rows if held.get(g) != shown[g] or rows[g].name != shown[g]]
        for g in moved:
            if g in held and held[g] != shown[g]:
                txn.delete(name_key(user, held[g]), db=self.dbs.names)
        for g in moved:
            txn.put(name_key(user, shown[g]), g, db=self.dbs.names)
            if rows[g].name != shown[g]:
                txn.put(g, replace(rows[g], name=shown[g]).encode(), db=self.dbs.mailboxes)

    # -- message writes --

    def append(
        self,
        txn: Any,
        user: str,
        name: str,
        items: Sequence[_PreparedAppend],
        *,
        autocreate_inbox: bool = True,
    ) -> list[MessageAppended]:
        """Append messages in order; they share one new modseq (one operation)."""
        user = check_user(user)
        name = check_mailbox_name(name)
        if (
            autocreate_inbox
            and name == INBOX
            and txn.get(name_key(user, INBOX), db=self.dbs.names) is None
        ):
            # Delivery to a new user's INBOX creates it, as LDA/LMTP do.
            self.create_mailbox(txn, user, INBOX)
        guid, row = self._resolve(txn, user, name)
        if not items:
            return []
        if row.uidnext + len(items) - 1 > MAX_UID:
            raise BadInputError(f"mailbox {name!r} has run out of UIDs; it needs a new UIDVALIDITY")
        modseq = row.highestmodseq + 1
        stamp = self.clock.now()
        uid = row.uidnext
        out = []
        vsize = row.vsize
        for item in items:
            if item.uid is not None:
                # A given UID (migration) may leave a gap, never go back (I3).
                if item.uid < uid:
                    raise UidNotAboveError(
                        f"UID {item.uid} is not above mailbox {name!r}'s highest UID {uid - 1}"
                    )
                uid = item.uid
            blobs.add_reference(txn, self.dbs, item.prepared)
            msg = MessageRow(
                item.guid,
                modseq,
                item.flags,
                item.internaldate,
                item.prepared.size,
                item.prepared.body_hash,
                stamped(item.flags, stamp),
            )
            txn.put(message_key(guid, uid), msg.encode(), db=self.dbs.messages)
            txn.put(change_key(guid, modseq, uid), CHANGE_MESSAGE, db=self.dbs.changes)
            out.append(_appended(row.user, guid, uid, msg, stamp, row.uidvalidity))
            vsize += msg.size
            uid += 1
        txn.put(
            guid,
            replace(
                row,
                uidnext=uid,
                highestmodseq=modseq,
                messages=row.messages + len(items),
                vsize=vsize,
            ).encode(),
            db=self.dbs.mailboxes,
        )
        return out

    def check_expected(self, txn: Any, mailbox: bytes, expect: Mapping[int, bytes] | None) -> None:
        """Refuse a forwarded command whose sender sees other messages under these
        UIDs than this master does (its copy diverged in a partition and is not
        resynced yet): acting on the master's messages would touch ones the
        client never meant (I6).  A UID already expunged here is fine; one whose
        message a conflict resolution moved to a new UID is refused too (the
        change would be lost at the old UID, I5)."""
        for uid, guid in (expect or {}).items():
            msg = self._message(txn, mailbox, uid)
            if msg is not None and msg.guid == guid:
                continue
            raw = txn.get(message_key(mailbox, uid), db=self.dbs.tombstones)
            if msg is None and raw is not None:
                guids, _, moved = unpack_tombstone(bytes(raw))
                if guid in guids and guid not in dict(moved):
                    continue  # expunged meanwhile: nothing to do, as IMAP has it
            raise ConflictError(
                f"UID {uid} names another message on the mailbox master; "
                "this node's copy is being resynchronised, retry shortly"
            )

    def copy(
        self,
        txn: Any,
        user: str,
        source: str,
        uids: UidSet,
        dest: str,
        expect: Mapping[int, bytes] | None = None,
    ) -> MessagesCopied:
        """Copy messages: new UIDs (RFC 4315 COPYUID) and new message GUIDs, the
        body shared by hash.

        A copy is a message instance of its own (I6): two copies of one
        message made on both sides of a partition at one UID are then two
        messages to the merge, a UID collision that keeps both, and an
        expunge of one copy never takes another (protocol-spec/resync.md
        §4, "copies are instances")."""
        src_guid, src_row = self._resolve(txn, user, source)
        dst_guid, dst_row = self._resolve(txn, user, dest)
        self.check_expected(txn, src_guid, expect)
        src_uids = self._uids_in(txn, src_guid, uids, src_row.uidnext)
        if not src_uids:
            return MessagesCopied(src_row.user, src_guid, (), ())
        if dst_row.uidnext + len(src_uids) - 1 > MAX_UID:
            raise BadInputError(f"mailbox {dest!r} has run out of UIDs")
        # Re-read the destination row: with source == dest it is the same row.
        modseq = dst_row.highestmodseq + 1
        stamp = self.clock.now()
        uid = dst_row.uidnext
        appended = []
        vsize = dst_row.vsize
        for src_uid in src_uids:
            msg = self._message(txn, src_guid, src_uid)
            assert msg is not None
            blobs.add_reference_to_existing(txn, self.dbs, msg.body_hash)
            # The copy is a new message: its flags are stamped now (I5).
            new = replace(
                msg, guid=os.urandom(16), modseq=modseq, marks=stamped(msg.flags, stamp)
            )
            txn.put(message_key(dst_guid, uid), new.encode(), db=self.dbs.messages)
            txn.put(change_key(dst_guid, modseq, uid), CHANGE_MESSAGE, db=self.dbs.changes)
            appended.append(_appended(dst_row.user, dst_guid, uid, new, stamp, dst_row.uidvalidity))
            vsize += new.size
            uid += 1
        txn.put(
            dst_guid,
            replace(
                dst_row,
                uidnext=uid,
                highestmodseq=modseq,
                messages=dst_row.messages + len(src_uids),
                vsize=vsize,
            ).encode(),
            db=self.dbs.mailboxes,
        )
        return MessagesCopied(src_row.user, src_guid, tuple(src_uids), tuple(appended))

    def store_flags(
        self,
        txn: Any,
        user: str,
        name: str,
        uids: UidSet,
        mode: FlagMode,
        flags: Iterable[str],
        *,
        unchangedsince: int | None = None,
        expect: Mapping[int, bytes] | None = None,
        stamp_unchanged: bool = False,
    ) -> FlagsChanged:
        """Change flags; messages whose flags do not change keep their modseq.

        With ``unchangedsince`` (RFC 7162 §3.1.3), messages whose modseq is
        above it are left alone and reported in ``rejected``.  A ``replace``
        is recorded as the deltas that turn the old flags of the touched
        messages into the new set, so replicas apply deltas only (I5).
        ``stamp_unchanged`` (this copy may lack another lineage's flag
        changes: it awaits a resync): an add or remove that changes no flag
        here is still stamped into the registers, with a new modseq, so the
        merge sees it as the latest intent (I5: the last writer wins).
        """
        if mode not in ("add", "remove", "replace"):
            raise BadInputError(f"bad flag mode {mode!r}")
        wanted = normalise_flags(flags)
        guid, row = self._resolve(txn, user, name)
        self.check_expected(txn, guid, expect)
        modseq = row.highestmodseq + 1
        targets: list[tuple[int, MessageRow]] = []
        rejected: list[int] = []
        removed_any: set[str] = set()
        for uid in self._uids_in(txn, guid, uids, row.uidnext):
            msg = self._message(txn, guid, uid)
            assert msg is not None
            if unchangedsince is not None and msg.modseq > unchangedsince:
                rejected.append(uid)
                continue
            old = frozenset(msg.flags)
            if mode == "add":
                new = old | wanted
            elif mode == "remove":
                new = old - wanted
            else:
                new = wanted
                removed_any |= old - wanted
            if new != old or (stamp_unchanged and mode != "replace"):
                targets.append((uid, msg))
        if mode == "add":
            added, removed = wanted, frozenset[str]()
        elif mode == "remove":
            added, removed = frozenset[str](), wanted
        else:
            added, removed = wanted, frozenset(removed_any)
        # The client decided after seeing these registers: its change must
        # win over every one of them, even if the wall clock went back since
        # they were written (a restart after a clock step, replicad.store.clock).
        stamp = self.clock.after(
            max((s for _, m in targets for _, s, _ in m.registers()), default=0)
        )
        # Each message's registers take the same deltas a replica applies, so
        # master and replicas hold identical registers (I4, I5).
        for uid, msg in targets:
            marks = apply_delta(msg.registers(), added, removed, stamp)
            txn.delete(change_key(guid, msg.modseq, uid), db=self.dbs.changes)
            txn.put(change_key(guid, modseq, uid), CHANGE_MESSAGE, db=self.dbs.changes)
            txn.put(
                message_key(guid, uid),
                replace(
                    msg, flags=flags_tuple(present(marks)), modseq=modseq, marks=marks
                ).encode(),
                db=self.dbs.messages,
            )
        changed = [uid for uid, _ in targets]
        if changed:
            txn.put(guid, replace(row, highestmodseq=modseq).encode(), db=self.dbs.mailboxes)
        else:
            modseq = row.highestmodseq
        return FlagsChanged(
            user=row.user,
            mailbox=guid,
            uids=tuple(changed),
            added=flags_tuple(added),
            removed=flags_tuple(removed),
            modseq=modseq,
            rejected=tuple(rejected),
            stamp=stamp,
            uidvalidity=row.uidvalidity,
            guids=tuple(msg.guid for _, msg in targets),
        )

    def expunge(
        self,
        txn: Any,
        user: str,
        name: str,
        uids: UidSet,
        expect: Mapping[int, bytes] | None = None,
    ) -> MessagesExpunged:
        """Remove messages, leaving tombstones so their UIDs are never reused (I3)."""
        guid, row = self._resolve(txn, user, name)
        self.check_expected(txn, guid, expect)
        targets = self._uids_in(txn, guid, uids, row.uidnext)
        if not targets:
            return MessagesExpunged(row.user, guid, (), row.highestmodseq)
        modseq = row.highestmodseq + 1
        gone = []
        vsize = row.vsize
        for uid in targets:
            msg = self._message(txn, guid, uid)
            assert msg is not None
            txn.delete(message_key(guid, uid), db=self.dbs.messages)
            txn.delete(change_key(guid, msg.modseq, uid), db=self.dbs.changes)
            txn.put(change_key(guid, modseq, uid), CHANGE_EXPUNGED, db=self.dbs.changes)
            txn.put(message_key(guid, uid), pack([msg.guid, modseq]), db=self.dbs.tombstones)
            blobs.drop_reference(txn, self.dbs, msg.body_hash)
            gone.append((uid, msg.guid))
            vsize -= msg.size
        txn.put(
            guid,
            replace(
                row, highestmodseq=modseq, messages=row.messages - len(targets), vsize=vsize
            ).encode(),
            db=self.dbs.mailboxes,
        )
        return MessagesExpunged(row.user, guid, tuple(gone), modseq, row.uidvalidity)

    def recent_save(
        self, txn: Any, user: str, name: str, guid: bytes, depth: int
    ) -> MessageAppended | None:
        """The message with GUID ``guid`` among the last ``depth`` changes of the
        mailbox (live or since expunged), as its SAVE recorded it; None if absent.

        A SAVE retried after its link broke (the reply was lost, not the
        write) finds its first attempt here and is not applied twice: message
        GUIDs are random per delivery, so the same GUID saved again in the
        same mailbox within moments is the same delivery (I6 counts it once)."""
        if not self.has_mailbox(txn, user, name):
            return None
        mailbox, row = self._resolve(txn, user, name)
        messages, tombstones, get = self.dbs.messages, self.dbs.tombstones, txn.get
        with txn.cursor(db=self.dbs.changes) as cur:
            if cur.set_range(change_key(mailbox, 2**64 - 1, MAX_UID)):
                found = cur.prev()
            else:
                found = cur.last()
            if not found:
                return None
            # Every delivery looks here first: kept lean (no key parsing, a row
            # decoded only when the GUID's octets are in it).
            for seen, (key, value) in enumerate(cur.iterprev()):
                if seen >= depth or key[:16] != mailbox:
                    break
                at = key[:16] + key[24:]  # the message key: mailbox, uid
                if value == CHANGE_MESSAGE:
                    raw = get(at, db=messages)
                    if raw is not None and guid in raw:
                        msg = MessageRow.decode(raw)
                        if msg.guid == guid:
                            uid = split_change_key(key)[1]
                            return _appended(row.user, mailbox, uid, msg, 0, row.uidvalidity)
                else:
                    raw = get(at, db=tombstones)
                    if raw is not None and guid in unpack_tombstone(bytes(raw))[0]:
                        modseq, uid = split_change_key(key)
                        return MessageAppended(
                            row.user, mailbox, uid, guid, modseq, (), 0, 0, b"", 0, row.uidvalidity
                        )
        return None

    def tombstones(self, txn: Any, user: str, name: str) -> list[tuple[int, bytes, int]]:
        """(uid, message guid, modseq) of every expunged UID of the mailbox, ascending."""
        guid, _ = self._resolve(txn, user, name)
        out = []
        with txn.cursor(db=self.dbs.tombstones) as cur:
            if cur.set_range(guid):
                for key, value in cur:
                    key = bytes(key)
                    if key[:16] != guid:
                        break
                    msg_guid, modseq = _unpack_tombstone(bytes(value))
                    out.append((uid_of_message_key(key), msg_guid, modseq))
        return out


def _unpack_tombstone(raw: bytes) -> tuple[bytes, int]:
    guids, modseq, _ = unpack_tombstone(raw)
    return guids[0], modseq


def _status(guid: bytes, row: MailboxRow) -> MailboxStatus:
    return MailboxStatus(
        user=row.user,
        name=row.name,
        guid=guid,
        uidvalidity=row.uidvalidity,
        uidnext=row.uidnext,
        highestmodseq=row.highestmodseq,
        messages=row.messages,
        vsize=row.vsize,
        claim=row.claim or row.name,
        name_stamp=row.name_stamp,
    )


def _info(uid: int, msg: MessageRow) -> MessageInfo:
    return MessageInfo(
        uid=uid,
        guid=msg.guid,
        modseq=msg.modseq,
        flags=msg.flags,
        internaldate=msg.internaldate,
        size=msg.size,
        body_hash=msg.body_hash,
    )


def _appended(
    user: str, mailbox: bytes, uid: int, msg: MessageRow, stamp: int, uidvalidity: int
) -> MessageAppended:
    return MessageAppended(
        user=user,
        mailbox=mailbox,
        uid=uid,
        guid=msg.guid,
        modseq=msg.modseq,
        flags=msg.flags,
        internaldate=msg.internaldate,
        size=msg.size,
        body_hash=msg.body_hash,
        stamp=stamp,
        uidvalidity=uidvalidity,
    )
