"""The node's side of the LMTP listener: :class:`NodeDelivery` implements
:class:`~replicad.lmtp.server.Delivery` on the store and the cluster.

Each recipient's copy takes the write path of the admin socket's ``save``
(:class:`~replicad.cluster.writes.ClusterWrites` in a cluster: the write
goes to its mailbox's master, wherever that is, and returns once the
user's durability level is met; the store itself on a single node).  The
recipients of one message are written concurrently -- they may have
different masters -- and every copy is the same octets (the trace headers
name no single recipient when there are several), so each node stores the
body once, under its content hash (:mod:`replicad.store.blobs`).

Each copy's message GUID is derived from the delivery
(:func:`~replicad.store.index.delivery_guid`: user, folder, and the
message as the MTA sent it), not random: when the MTA retries a message it
was answered 451 for after the copy was written (the durability wait ran
out at the write deadline), the mailbox's master recognises the GUID and
answers with the first copy, as it does for a SAVE retried over a broken
link, within :data:`~replicad.store.index.DELIVERY_RETRY_WINDOW`.

Errors become outcomes, never a 250 for a copy that is not stored:

* :class:`~replicad.errors.DurabilityError` (the level cannot be met now)
  -> :attr:`DeliveryStatus.DURABILITY`, ``451 4.3.0``;
* :class:`~replicad.errors.StoreFullError` -> ``452 4.3.1``;
* any other error, temporary (unreachable master, timeout) or not ->
  ``451 4.3.0``, with the error in the outcome (the listener logs it);
  an exception that is no ReplicadError is also logged with its traceback.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from replicad.cluster.writeops import SAVE_RETRY_DEPTH
from replicad.cluster.writes import ClusterWrites
from replicad.errors import (
    BadInputError,
    DurabilityError,
    NoSuchMailboxError,
    NotFoundError,
    ReplicadError,
    StoreFullError,
)
from replicad.lmtp.protocol import INBOX, DeliveryStatus
from replicad.lmtp.server import DeliveryOutcome
from replicad.store.index import (
    AppendRequest,
    check_mailbox_name,
    check_user,
    delivery_guid,
    retry_within_window,
)
from replicad.store.mailstore import MailStore
from replicad.store.records import MessageAppended
from replicad.usernames import DEFAULT_USERNAME_FORMAT, normalise_user

log = logging.getLogger("replicad.lmtp")

UserExists = Callable[[str], Awaitable[bool]]


class NodeDelivery:
    """LMTP deliveries into this node's store, through the cluster's write path.

    ``user_exists`` decides which users get mail (RCPT's 250 or 550).  The
    node passes :meth:`MailStore.has_user`: a user is known once the store
    holds any mailbox of theirs (created by ``replicad mailbox create``, a
    ``save`` or an ``import``, here or -- replicated -- on another node).
    Once the user directory (the passwd-file of the auth module) exists,
    the node passes its lookup instead; nothing here changes.
    """

    def __init__(
        self,
        store: MailStore,
        writes: MailStore | ClusterWrites,
        *,
        user_exists: UserExists,
        username_format: str = DEFAULT_USERNAME_FORMAT,
    ) -> None:
        """``username_format``: ``auth.username_format``, applied to every
        recipient, so LMTP, IMAP and the CLI name a user alike."""
        self._store = store
        self._writes = writes
        self._user_exists = user_exists
        self._format = username_format

    async def known_user(self, user: str) -> bool:
        try:
            user = normalise_user(user, self._format)
            check_user(user)
        except BadInputError:
            return False  # a name the store could never hold (spaces, control characters)
        return await self._user_exists(user)

    async def deliver(
        self,
        body: bytes,
        recipients: Sequence[tuple[str, str]],
        *,
        message_key: bytes | None = None,
    ) -> list[DeliveryOutcome]:
        outcomes: list[DeliveryOutcome | None] = [None] * len(recipients)
        key = message_key if message_key is not None else hashlib.sha256(body).digest()

        async def one(index: int, user: str, mailbox: str) -> None:
            outcomes[index] = await self._deliver_one(body, user, mailbox, key)

        async with trio.open_nursery() as nursery:
            for index, (user, mailbox) in enumerate(recipients):
                nursery.start_soon(one, index, user, mailbox)
        done = [o for o in outcomes if o is not None]
        assert len(done) == len(recipients)
        return done

    async def _deliver_one(
        self, body: bytes, user: str, mailbox: str, key: bytes
    ) -> DeliveryOutcome:
        try:
            user = normalise_user(user, self._format)
            folder = await self._folder(user, mailbox)
            try:
                appended = await self._save(user, folder, body, key)
            except NoSuchMailboxError:
                if folder == INBOX:
                    raise
                # Deleted (or renamed away) since we looked: INBOX, as if absent.
                folder = INBOX
                appended = await self._save(user, folder, body, key)
        except DurabilityError as exc:
            return DeliveryOutcome(DeliveryStatus.DURABILITY, error=_describe(exc))
        except StoreFullError as exc:
            return DeliveryOutcome(DeliveryStatus.STORE_FULL, error=_describe(exc))
        except ReplicadError as exc:
            return DeliveryOutcome(DeliveryStatus.TEMPFAIL, error=_describe(exc))
        except Exception as exc:
            log.exception("lmtp.delivery_failed", extra={"kv": {"error": type(exc).__name__}})
            return DeliveryOutcome(DeliveryStatus.TEMPFAIL, error=_describe(exc))
        return DeliveryOutcome(DeliveryStatus.SAVED, mailbox=folder, uid=appended.uid)

    async def _save(self, user: str, folder: str, body: bytes, key: bytes) -> MessageAppended:
        """One copy, under the GUID the delivery derives from ``key``: a retry
        of a delivery already stored (within the retry window) is answered
        with that copy, by the mailbox's master (or the store, on a single
        node), and nothing is written twice."""
        guid = delivery_guid(user, folder, key)
        if isinstance(self._writes, MailStore):
            now = int(time.time())
            request = AppendRequest(body, (), now, guid)
            return await self._writes.save_once(
                user, folder, request, depth=SAVE_RETRY_DEPTH, accept=retry_within_window(now)
            )
        return await self._writes.append(user, folder, body, guid=guid)

    async def _folder(self, user: str, mailbox: str) -> str:
        """``mailbox`` if the user has that folder here, else INBOX
        (Dovecot's ``lmtp_save_to_detail_mailbox`` without autocreate)."""
        if mailbox == INBOX:
            return INBOX
        try:
            name = check_mailbox_name(mailbox)
            if name == INBOX:
                return INBOX
            await self._store.mailbox_status(user, name)
        except (BadInputError, NotFoundError):
            return INBOX
        return name


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
