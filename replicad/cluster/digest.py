"""Digests of mailbox state (I4, I8): equal digests mean equal logical state.

:func:`state_digest` covers everything I4 says must converge for one
mailbox: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, every live message (UID,
GUID, MODSEQ, INTERNALDATE, size, body hash and its per-flag registers) and
every tombstone (UID, MODSEQ, GUIDs).  It guards a logged merge (a follower
applies the master's plan only to the state it was computed from) and is
what nodes compare in anti-entropy (protocol-spec/resync.md).
"""

from __future__ import annotations

import hashlib

import msgpack

from replicad.cluster.merge import MailboxState


def state_digest(state: MailboxState) -> bytes:
    """SHA-256 over the canonical msgpack form of ``state`` (32 bytes)."""
    form = [
        state.uidvalidity,
        state.uidnext,
        state.highestmodseq,
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
            for m in state.messages
        ],
        [
            [t.uid, t.modseq, sorted(t.guids), [[g, u] for g, u in t.moved]]
            for t in state.tombstones
        ],
    ]
    return hashlib.sha256(msgpack.packb(form, use_bin_type=True)).digest()
