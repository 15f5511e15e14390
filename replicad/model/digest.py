"""Digests of mailbox state (I4, I8): equal digests mean equal logical state.

:func:`state_digest` covers everything I4 says must converge for one
mailbox: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, every live message (UID,
GUID, MODSEQ, INTERNALDATE, size, body hash and its per-flag registers) and
every tombstone (UID, MODSEQ, GUIDs).  It guards a logged merge (a follower
applies the master's plan only to the state it was computed from) and is
what nodes compare in anti-entropy (protocol-spec/resync.md).
:func:`entries_digest` covers a set of entries only: an incremental SYNC
checks with it that the entries not sent are the same on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from replicad.model.merge import MailboxState, MessageState, Tombstone


def state_digest(state: MailboxState) -> bytes:
    """SHA-256 over the canonical msgpack form of ``state`` (32 bytes)."""
    form = [
        state.uidvalidity,
        state.uidnext,
        state.highestmodseq,
        *_entry_forms(state.messages, state.tombstones),
    ]
    return hashlib.sha256(msgpack.packb(form, use_bin_type=True)).digest()


def entries_digest(messages: Iterable[MessageState], tombstones: Iterable[Tombstone]) -> bytes:
    """SHA-256 over the canonical form of some entries of a mailbox, in UID
    order whatever the order given (32 bytes; the digest of none is fixed)."""
    form = _entry_forms(
        sorted(messages, key=lambda m: m.uid), sorted(tombstones, key=lambda t: t.uid)
    )
    return hashlib.sha256(msgpack.packb(form, use_bin_type=True)).digest()


def _entry_forms(
    messages: Iterable[MessageState], tombstones: Iterable[Tombstone]
) -> list[list[Any]]:
    return [
        [
            [
                m.uid,
                m.guid,
                m.modseq,
                m.internaldate,
                m.size,
                m.body_hash,
                [[k.flag, k.stamp, k.present] for k in m.marks],
            ]
            for m in messages
        ],
        [[t.uid, t.modseq, sorted(t.guids), [[g, u] for g, u in t.moved]] for t in tombstones],
    ]


#: Users hash into 65536 buckets, grouped by their first octet into 256 groups
#: (verbs.md DIGEST): a three-level tree that finds one changed mailbox among
#: many in a fixed number of round trips (I8).
BUCKETS = 65536
GROUP_FLAG = 0x10000  # a DIGEST number at or above this names a group


def bucket_of(user: str) -> int:
    """The bucket of a user: the first two octets of SHA-256 of its name."""
    return int.from_bytes(hashlib.sha256(user.encode()).digest()[:2], "big")


@dataclass(frozen=True, slots=True)
class MailboxDigest:
    """One mailbox as anti-entropy compares it (``* MAILBOX``)."""

    user: str
    name: str
    guid: bytes
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    digest: bytes


def _hash(parts: list[Any]) -> bytes:
    return hashlib.sha256(msgpack.packb(parts, use_bin_type=True)).digest()


@dataclass(frozen=True, slots=True)
class DigestTree:
    """A node's digests: per bucket, per group of 256 buckets, and whole.

    Each level hashes the sorted level below, so two nodes holding the same
    mailboxes (same names, GUIDs and state digests) have equal digests at
    every level, and a difference shows in exactly the buckets that differ.
    """

    buckets: dict[int, tuple[int, bytes]]  # bucket -> (users, digest); non-empty only
    groups: dict[int, tuple[int, bytes]]  # group -> (users, digest)
    whole: tuple[int, bytes]

    @classmethod
    def build(cls, mailboxes: list[MailboxDigest]) -> DigestTree:
        by_bucket: dict[int, list[MailboxDigest]] = {}
        for m in mailboxes:
            by_bucket.setdefault(bucket_of(m.user), []).append(m)
        buckets = {}
        for b, items in by_bucket.items():
            items.sort(key=lambda m: (m.user, m.name))
            users = len({m.user for m in items})
            buckets[b] = (users, _hash([[m.user, m.name, m.guid, m.digest] for m in items]))
        by_group: dict[int, list[int]] = {}
        for b in sorted(buckets):
            by_group.setdefault(b >> 8, []).append(b)
        groups = {
            g: (sum(buckets[b][0] for b in bs), _hash([[b, buckets[b][1]] for b in bs]))
            for g, bs in by_group.items()
        }
        whole = (
            sum(u for u, _ in groups.values()),
            _hash([[g, groups[g][1]] for g in sorted(groups)]),
        )
        return cls(buckets, groups, whole)
