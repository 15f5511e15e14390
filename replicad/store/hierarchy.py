"""Mailbox hierarchy rules shared by every front door (CLI, IMAP, migration).

Names are levels joined by ``/`` (:data:`~replicad.store.index.SEPARATOR`).
RFC 3501 §6.3.3 / RFC 9051 §6.3.4: CREATE makes the missing superiors of
the name it creates, so ``create Work/Projects`` also creates ``Work`` and a
later ``rename Work Jobs`` moves both (RENAME takes the inferiors with it,
:meth:`~replicad.store.index.MailIndex.rename_mailbox`).  DELETE of a
mailbox removes it and its messages but never its inferiors; the name then
stays visible only as their superior (``\\Noselect``, see
:func:`~replicad.store.namespace.implied_names`), and deleting such a name
is an error, as RFC 3501 §6.3.4 requires.

The write API is anything with the store's ``create_mailbox`` (the store
itself on one node, the cluster's write path in a cluster), so each
superior is created -- and replicated -- like any other mailbox.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Protocol

from replicad.errors import AlreadyExistsError
from replicad.store.index import check_mailbox_name
from replicad.store.namespace import superiors
from replicad.store.records import MailboxCreated


class CreatesMailboxes(Protocol):
    async def create_mailbox(self, user: str, name: str) -> MailboxCreated: ...


async def create_with_superiors(writes: CreatesMailboxes, user: str, name: str) -> MailboxCreated:
    """Create the missing superiors of ``name``, then ``name`` itself.

    A superior that exists already (or is created concurrently elsewhere)
    is left as it is; ``name`` existing is the caller's AlreadyExistsError.
    """
    name = check_mailbox_name(name)
    for superior in superiors(name):
        with suppress(AlreadyExistsError):
            await writes.create_mailbox(user, superior)
    return await writes.create_mailbox(user, name)
