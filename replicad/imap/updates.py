"""Untagged updates of the selected mailbox (RFC 3501 §7.3-§7.4, RFC 7162 §3.2.10).

:func:`send_updates` asks the local store what changed since the session
last looked (:class:`~replicad.imap.view.MailboxView`) and tells the
client: ``EXISTS`` for new messages, ``FETCH (UID FLAGS …)`` for flags
changed by anyone else, ``EXPUNGE`` or ``VANISHED`` when the session may
send them.  It runs at NOOP, CHECK, during IDLE (woken by every commit of
the node, so a change applied here reaches an idling client within one
commit), and after the commands that allow it.

A mailbox renamed under the session (same GUID) is followed.  One that was
deleted, or replaced under another UIDVALIDITY, cannot be shown without
renumbering: the session says ``* BYE`` and the connection closes, so the
client selects again and resynchronises (architecture.md §11: never a
silent renumbering).
"""

from __future__ import annotations

from replicad.errors import NoSuchMailboxError
from replicad.imap.responses import (
    ResponseCode,
    Value,
    flag_list,
    render_bye,
    render_exists,
    render_expunge,
    render_fetch,
    render_flags,
    render_recent,
    render_vanished,
)
from replicad.imap.session import ImapSession, Outcome, Selected
from replicad.imap.view import Exists, Expunged, FlagsUpdate, OutOfOrder, Update, Vanished


async def send_updates(session: ImapSession, *, expunges: bool) -> None:
    """Tell the client what changed; ``expunges``: EXPUNGE/VANISHED may be sent now."""
    selected = session.selected
    if selected is None or session.user is None:
        return
    user = session.user
    try:
        status = await session.access.status(user, selected.name)
    except NoSuchMailboxError:
        status = None
    if status is None or status.guid != selected.guid:
        moved = await session.access.store.mailbox_by_guid(selected.guid)
        if moved is None or moved.user != user:
            await _close(session, "The selected mailbox was deleted")
            return
        selected.name = moved.name  # renamed under us: same mailbox, same UIDs
        status = moved
    if status.uidvalidity != selected.view.uidvalidity:
        await _close(session, "The selected mailbox was replaced (UIDVALIDITY changed)")
        return
    if status.highestmodseq <= selected.view.seen_modseq and not (
        expunges and selected.view.has_pending_expunges
    ):
        return
    changes = await session.access.changes_since(user, selected.name, selected.view.seen_modseq)
    updates = selected.view.refresh(changes)
    if expunges:
        updates += selected.view.flush_expunges(vanished=session.qresync)
    await send_view_updates(session, updates)


SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def shown_flags(selected: Selected, uid: int, flags: tuple[str, ...]) -> tuple[str, ...]:
    """The flags a client is shown: the stored ones, plus ``\\Recent`` when
    this session holds the message as recent (replicad.imap.recent)."""
    return (*flags, "\\Recent") if uid in selected.recent else flags


async def announce_keywords(session: ImapSession, flags: tuple[str, ...]) -> None:
    """Before a FETCH shows a keyword the client has not seen in ``* FLAGS``,
    send the new list (RFC 3501 §7.2.6: FLAGS lists every flag in use)."""
    selected = session.selected
    if selected is None:
        return
    new = {f for f in flags if not f.startswith("\\")} - selected.keywords
    if not new:
        return
    selected.keywords |= new
    keywords = sorted(selected.keywords)
    await session.send(render_flags([*SYSTEM_FLAGS, *keywords]))
    if not selected.read_only:
        code = ResponseCode.permanentflags([*SYSTEM_FLAGS, *keywords])
        await session.untagged_ok("Flags permitted", code)


async def send_view_updates(session: ImapSession, updates: list[Update]) -> None:
    selected = session.selected
    for update in updates:
        if isinstance(update, Exists):
            await session.send(render_exists(update.count))
            if selected is not None and not selected.read_only:
                fresh = selected.view.uids[selected.told_exists : update.count]
                selected.recent |= session.access.recent.claim(
                    selected.guid, selected.view.uidvalidity, fresh
                )
            if selected is not None:
                await session.send(render_recent(len(selected.recent)))
            _note_told(selected, update.count)
        elif isinstance(update, Expunged):
            await session.send(render_expunge(update.seq))
            if selected is not None:
                selected.recent.discard(update.uid)
                selected.told_exists -= 1
        elif isinstance(update, Vanished):
            await session.send(render_vanished(update.uids))
            if selected is not None:
                selected.recent.difference_update(update.uids)
                selected.told_exists -= len(update.uids)
        elif isinstance(update, FlagsUpdate):
            assert selected is not None
            await announce_keywords(session, update.flags)
            items: list[tuple[str, Value]] = [
                ("UID", update.uid),
                ("FLAGS", flag_list(shown_flags(selected, update.uid, update.flags))),
            ]
            if session.condstore:
                items.append(("MODSEQ", (update.modseq,)))
            await session.send(render_fetch(update.seq, items))
        elif isinstance(update, OutOfOrder):
            await _close(session, "Messages arrived out of UID order; select the mailbox again")
            return


def _note_told(selected: Selected | None, count: int) -> None:
    if selected is not None:
        selected.told_exists = count


async def _close(session: ImapSession, why: str) -> None:
    await session.send(render_bye(why, ResponseCode.simple("UNAVAILABLE")))
    session.outcome = Outcome.CLOSE
