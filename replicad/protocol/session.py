"""Session records: the handshake, link upkeep and session-local mailbox ids.

``* HELLO`` (handshake.md), ``* BAD`` (fatal: the sender closes the link),
PING, COMPRESS (compression.md) and MBOX (verbs.md §1: binds a
session-local id to a mailbox).  Wire names: :mod:`replicad.protocol.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from replicad.protocol.fields import (
    ATOM,
    GUID,
    MAILBOX,
    MAX_U16,
    MBOX_ID,
    MODSEQ,
    NODE,
    REASON,
    U32,
    UID,
    UIDVALIDITY,
    USER,
    ListOf,
    UInt,
)
from replicad.protocol.frames import DEFAULT_MAX_FRAME
from replicad.protocol.records import (
    Command,
    Record,
    Untagged,
)

PROTOCOL_VERSION: Final = 5


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
class Pong(Record):
    """PING's OK: the answering node's open IMAP sessions (``replicad top``
    shows them per node; a liveness reply is the one frame every peer
    already sends each second)."""

    SCHEMA = (U32,)
    imap_sessions: int


@dataclass(frozen=True, slots=True)
class Ping(Command):
    VERB = "PING"
    REPLY = Pong


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
