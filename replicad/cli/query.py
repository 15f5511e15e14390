"""The small doveadm search-query subset the mail commands take.

``mailbox NAME [uid SET | all]``, keywords in any order, e.g.
``mailbox INBOX uid 1:4,7`` or ``uid 3 mailbox Archive/2024``.  Parsing is
pure; mistakes are :class:`~replicad.errors.UsageError` (exit 64), a bad UID
set is :class:`~replicad.errors.BadInputError` (exit 65).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from replicad.errors import UsageError
from replicad.uidset import UidSet


@dataclass(frozen=True, slots=True)
class Query:
    mailbox: str
    uids: UidSet
    explicit: bool  # whether "uid SET" or "all" was given


def parse_query(words: Sequence[str], *, require_selection: bool) -> Query:
    """Parse the query words; ``require_selection`` guards destructive commands."""
    mailbox: str | None = None
    uids: UidSet | None = None
    i = 0
    while i < len(words):
        word = words[i].lower()
        if word in ("mailbox", "uid"):
            if i + 1 >= len(words):
                raise UsageError(f"search query: {word!r} needs an argument")
            value = words[i + 1]
            if word == "mailbox":
                if mailbox is not None:
                    raise UsageError("search query: only one mailbox can be given")
                mailbox = value
            else:
                if uids is not None:
                    raise UsageError("search query: give one 'uid SET' (or 'all')")
                uids = UidSet.parse(value)
            i += 2
        elif word == "all":
            if uids is not None:
                raise UsageError("search query: give one 'uid SET' (or 'all')")
            uids = UidSet.parse("all")
            i += 1
        else:
            raise UsageError(
                f"search query: unknown word {words[i]!r} (expected: mailbox NAME [uid SET | all])"
            )
    if mailbox is None:
        raise UsageError("search query: 'mailbox NAME' is required")
    if uids is None and require_selection:
        raise UsageError("search query: give 'uid SET' or 'all' to say which messages")
    return Query(mailbox, uids if uids is not None else UidSet.parse("all"), uids is not None)
