"""Which target message is which source message: GUIDs derived from the source (pure).

A migrated message's GUID is not random: its first 12 octets are a *folder
tag*, a hash of (target user, target mailbox, source UIDVALIDITY), and its
last 4 the source UID (RFC 3501 §2.3.1.1: UIDs are 32-bit).  The GUID is
written in the same transaction as the message (IMPORT, verbs.md), so the
target itself says which of its messages the migration brought and from
which source UID, whatever UID the message got here:

* a pass cut anywhere (``kill -9``) leaves no mapping to lose: the next
  pass reads it back from the messages (docs/architecture.md §12);
* mail that reached the mailbox another way (LMTP after the MX switch, a
  client's APPEND) has GUIDs without the tag and is never expunged or
  re-flagged by a pass;
* a copy made here by COPY/MOVE is a new instance with a GUID of its own
  (I6), so it is not mistaken for the source message either.

A tag names one source UID space: when the source's UIDVALIDITY changes,
messages under the old tag are the old space's.
"""

from __future__ import annotations

import hashlib
from typing import Final

TAG_OCTETS: Final = 12
_DOMAIN = b"replicad migrate guid v1\0"


def folder_tag(user: str, mailbox: str, uidvalidity: int) -> bytes:
    """The 12-octet tag of one source UID space migrated into (user, mailbox)."""
    digest = hashlib.sha256(
        _DOMAIN
        + user.encode("utf-8", "surrogateescape")
        + b"\0"
        + mailbox.encode("utf-8", "surrogateescape")
        + b"\0"
        + uidvalidity.to_bytes(4, "big")
    ).digest()
    return digest[:TAG_OCTETS]


def message_guid(tag: bytes, source_uid: int) -> bytes:
    """The GUID of the message at ``source_uid`` of the space ``tag`` names."""
    return tag + source_uid.to_bytes(4, "big")


def source_uid(tag: bytes, guid: bytes) -> int | None:
    """The source UID ``guid`` was migrated from under ``tag``, or None."""
    if len(guid) != TAG_OCTETS + 4 or guid[:TAG_OCTETS] != tag:
        return None
    return int.from_bytes(guid[TAG_OCTETS:], "big")
