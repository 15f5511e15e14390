"""SEARCH: evaluating a criteria tree against the messages of a mailbox.

The keys split by cost.  Flags, UIDs, sequence numbers, sizes, internal
dates and modseqs are in the index (:class:`~replicad.imap.mailboxindex.MessageMeta`),
so they never touch a message body.  Header, body and text keys and the
sent date need the message itself; :func:`matches` asks for it through a
loader only when a cheap key has not already decided, and evaluates the
cheap branches of AND/OR first, so ``SEARCH UNSEEN SUBJECT x`` reads only
the bodies of unseen messages (issue: "SEARCH without loading every body
for flag/date/size keys").

Semantics follow RFC 3501 §6.4.4 (RFC 9051 §6.4.4 where it simplifies):
date keys compare dates only, disregarding time and time zone (the internal
date is taken in UTC; the sent date as written in its ``Date:`` header);
string keys are case-insensitive substring matches.  ``RECENT``/``OLD``
follow the session's ``\\Recent`` messages (replicad.imap.recent).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from replicad.imap.mailboxindex import MessageMeta
from replicad.imap.searchkeys import (
    AllKey,
    AndKey,
    BodyKey,
    DateField,
    DateKey,
    DateRelation,
    FlagKey,
    HeaderKey,
    ModSeqKey,
    NotKey,
    OrKey,
    RecentKey,
    SearchKey,
    SequenceKey,
    SizeKey,
    TextKey,
    UidKey,
)


class MessageText(Protocol):
    """What the text keys need from one message's bytes."""

    def header_contains(self, field: str, value: str) -> bool: ...

    def body_contains(self, value: str) -> bool: ...

    def text_contains(self, value: str) -> bool: ...

    def sent_date(self) -> datetime.date | None: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """One message as SEARCH sees it: index data plus its number in the session."""

    info: MessageMeta
    seq: int
    #: \\Recent for this session (replicad.imap.recent).
    recent: bool = False


@dataclass(frozen=True, slots=True)
class SearchScope:
    """What sequence-set keys resolve against: ``*`` is the last number / UID."""

    last_seq: int
    last_uid: int


def needs_text(key: SearchKey) -> bool:
    """True if deciding ``key`` may need the message bytes."""
    if isinstance(key, HeaderKey | BodyKey | TextKey):
        return True
    if isinstance(key, DateKey):
        return key.field is DateField.SENT
    if isinstance(key, NotKey):
        return needs_text(key.key)
    if isinstance(key, OrKey):
        return needs_text(key.left) or needs_text(key.right)
    if isinstance(key, AndKey):
        return any(needs_text(k) for k in key.keys)
    return False


def matches(
    key: SearchKey,
    message: Candidate,
    scope: SearchScope,
    text: Callable[[], MessageText],
) -> bool:
    """Whether ``message`` satisfies ``key``; ``text()`` is called only if needed."""
    info = message.info
    if isinstance(key, AllKey):
        return True
    if isinstance(key, FlagKey):
        return (key.flag in info.flags) == key.present
    if isinstance(key, RecentKey):
        return message.recent == key.present
    if isinstance(key, SizeKey):
        return info.size > key.size if key.larger else info.size < key.size
    if isinstance(key, SequenceKey):
        return key.numbers.contains(message.seq, scope.last_seq)
    if isinstance(key, UidKey):
        return key.uids.contains(info.uid, scope.last_uid)
    if isinstance(key, ModSeqKey):
        return info.modseq >= key.modseq
    if isinstance(key, DateKey):
        if key.field is DateField.INTERNAL:
            day: datetime.date | None = datetime.datetime.fromtimestamp(
                info.internaldate, datetime.UTC
            ).date()
        else:
            day = text().sent_date()
        return day is not None and _compare(day, key.relation, key.date)
    if isinstance(key, HeaderKey):
        return text().header_contains(key.field, key.value)
    if isinstance(key, BodyKey):
        return text().body_contains(key.value)
    if isinstance(key, TextKey):
        return text().text_contains(key.value)
    if isinstance(key, NotKey):
        return not matches(key.key, message, scope, text)
    if isinstance(key, OrKey):
        first, second = _cheap_first(key.left, key.right)
        return matches(first, message, scope, text) or matches(second, message, scope, text)
    assert isinstance(key, AndKey)
    ordered = sorted(key.keys, key=needs_text)  # cheap keys decide first
    return all(matches(k, message, scope, text) for k in ordered)


def _cheap_first(a: SearchKey, b: SearchKey) -> tuple[SearchKey, SearchKey]:
    return (b, a) if needs_text(a) and not needs_text(b) else (a, b)


def _compare(day: datetime.date, relation: DateRelation, date: datetime.date) -> bool:
    if relation is DateRelation.BEFORE:
        return day < date
    if relation is DateRelation.ON:
        return day == date
    return day >= date
