"""Authenticated-state commands on mailboxes (RFC 3501 §6.3): LIST (with
RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE), LSUB,
STATUS, CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE and APPEND (RFC 4315
APPENDUID).

Writes go through :class:`~replicad.imap.mailaccess.MailAccess`, so to the
mailbox master, and answer once this node's copy holds them.

Subscriptions are names, kept per user whether or not a mailbox has the
name (RFC 3501 §6.3.6), and replicated like any write
(:mod:`replicad.store.subscriptions`); which names LSUB and the
LIST-EXTENDED forms return is decided in :mod:`replicad.imap.listing`.
"""

from __future__ import annotations

from replicad.errors import NoSuchMailboxError
from replicad.imap.commands import (
    Append,
    Create,
    Delete,
    List,
    Lsub,
    Rename,
    Status,
    StatusItem,
    Subscribe,
    Unsubscribe,
)
from replicad.imap.listing import (
    DELIMITER,
    join_pattern,
    list_names,
    list_subscribed,
    lsub_names,
    special_use,
)
from replicad.imap.responses import (
    ResponseCode,
    render_list,
    render_lsub,
    render_status,
)
from replicad.imap.sequences import SequenceSet
from replicad.imap.session import ImapSession, Refusal
from replicad.imap.updates import send_updates
from replicad.store.namespace import implied_names
from replicad.store.records import MailboxStatus

INBOX = "INBOX"


async def list_mailboxes(session: ImapSession, cmd: List) -> None:
    user = session.require_user()
    if cmd.patterns == ("",) and not cmd.extended:
        # RFC 3501 §6.3.8: the delimiter and the root of the reference.
        await session.send(render_list(("\\Noselect",), DELIMITER, "", utf8=session.utf8))
        await session.ok(cmd.tag, "LIST completed")
        return
    statuses = {m.name: m for m in await session.access.mailboxes(user)}
    patterns = [join_pattern(cmd.reference, p) for p in cmd.patterns if p]
    wanted = "SUBSCRIBED" in cmd.selection or "SUBSCRIBED" in cmd.returns
    subscribed = await session.access.subscriptions(user) if wanted else set()
    if "SUBSCRIBED" in cmd.selection:
        listed = list_subscribed(
            statuses, subscribed, patterns, recursive="RECURSIVEMATCH" in cmd.selection
        )
    else:
        listed = list_names(
            statuses,
            patterns,
            extended=cmd.extended,
            subscribed=subscribed,
            special_only="SPECIAL-USE" in cmd.selection,
        )
    for entry in listed:
        extended = [("CHILDINFO", ("SUBSCRIBED",))] if entry.childinfo else []
        line = render_list(
            entry.attributes, DELIMITER, entry.name, extended=extended, utf8=session.utf8
        )
        await session.send(line)
        if cmd.status_items and entry.selectable:
            items = await _status_items(session, statuses[entry.name], cmd.status_items)
            await session.send(render_status(entry.name, items, utf8=session.utf8))
    await session.ok(cmd.tag, "LIST completed")


async def lsub(session: ImapSession, cmd: Lsub) -> None:
    user = session.require_user()
    pattern = join_pattern(cmd.reference, cmd.pattern)
    if pattern:
        for name, attributes in lsub_names(await session.access.subscriptions(user), pattern):
            await session.send(render_lsub(attributes, DELIMITER, name, utf8=session.utf8))
    await session.ok(cmd.tag, "LSUB completed")


async def status(session: ImapSession, cmd: Status) -> None:
    user = session.require_user()
    state = await session.access.status(user, cmd.mailbox)
    items = await _status_items(session, state, cmd.items)
    await session.send(render_status(state.name, items, utf8=session.utf8))
    await session.ok(cmd.tag, "STATUS completed")


async def _status_items(
    session: ImapSession, state: MailboxStatus, wanted: tuple[StatusItem, ...]
) -> list[tuple[str, int]]:
    counts: dict[str, int] = {"RECENT": 0}
    if {StatusItem.UNSEEN, StatusItem.DELETED, StatusItem.RECENT} & set(wanted):
        # Flags live per message: one read of the index, no bodies.
        user = session.require_user()
        infos = await session.access.snapshot(user, state.name)
        counts["UNSEEN"] = sum(1 for m in infos.messages if "\\Seen" not in m.flags)
        counts["DELETED"] = sum(1 for m in infos.messages if "\\Deleted" in m.flags)
        counts["RECENT"] = session.access.recent.count(
            state.guid, state.uidvalidity, (m.uid for m in infos.messages)
        )
    values = {
        StatusItem.MESSAGES: state.messages,
        StatusItem.RECENT: counts["RECENT"],
        StatusItem.UIDNEXT: state.uidnext,
        StatusItem.UIDVALIDITY: state.uidvalidity,
        StatusItem.HIGHESTMODSEQ: state.highestmodseq,
        StatusItem.SIZE: state.vsize,
    }
    out = []
    for item in wanted:
        if item is StatusItem.UNSEEN or item is StatusItem.DELETED:
            out.append((item.value, counts[item.value]))
        else:
            out.append((item.value, values[item]))
    if StatusItem.HIGHESTMODSEQ in wanted:
        await session.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE-enabling command
    return out


async def create(session: ImapSession, cmd: Create) -> None:
    user = session.require_user()
    name = cmd.mailbox.rstrip(DELIMITER)  # RFC 3501 §6.3.3: "foo/" creates foo
    if not name:
        raise Refusal("Empty mailbox name", "CANNOT")
    if name.upper() == INBOX:
        raise Refusal("INBOX always exists", "ALREADYEXISTS")
    for use in cmd.special_use:
        if special_use(name) != use:
            raise Refusal(
                f"{use} is kept for the mailbox named after it on this server", "USEATTR"
            )
    await session.access.create(user, name)
    await session.ok(cmd.tag, "CREATE completed")


async def delete(session: ImapSession, cmd: Delete) -> None:
    user = session.require_user()
    if cmd.mailbox == INBOX:
        raise Refusal("INBOX cannot be deleted", "CANNOT")
    selected = session.selected
    state = await session.access.status(user, cmd.mailbox)
    if selected is not None and selected.guid == state.guid:
        session.select(None)
        await session.untagged_ok("Mailbox deleted", ResponseCode.simple("CLOSED"))
    await session.access.delete(user, cmd.mailbox)
    await session.ok(cmd.tag, "DELETE completed")


async def rename(session: ImapSession, cmd: Rename) -> None:
    user = session.require_user()
    if cmd.mailbox == INBOX:
        # RFC 3501 §6.3.5 moves INBOX's messages to the new name; not offered yet.
        raise Refusal("Renaming INBOX is not supported on this server", "CANNOT")
    new = cmd.new_name.rstrip(DELIMITER)
    await session.access.rename(user, cmd.mailbox, new)
    if session.selected is not None:
        await send_updates(session, expunges=False)  # follows the selected mailbox's name
    await session.ok(cmd.tag, "RENAME completed")


async def subscribe(session: ImapSession, cmd: Subscribe) -> None:
    """RFC 3501 §6.3.6: the server MAY check that the mailbox exists, and
    does, as Dovecot does (a name LIST shows, a mailbox or the superior of
    some); once subscribed, the name is kept after its mailbox is deleted or
    renamed until the client unsubscribes it (the RFC's MUST NOT remove)."""
    user = session.require_user()
    name = _subscription_name(cmd.mailbox)
    existing = {m.name for m in await session.access.mailboxes(user)}
    canonical = INBOX if name.upper() == INBOX else name
    if canonical not in existing | implied_names(existing, DELIMITER):
        raise Refusal(f"Mailbox doesn't exist: {name}", "NONEXISTENT")
    await session.access.subscribe(user, name, True)
    await session.ok(cmd.tag, "SUBSCRIBE completed")


async def unsubscribe(session: ImapSession, cmd: Unsubscribe) -> None:
    """RFC 3501 §6.3.7: any name, existing or not (a client removes the
    subscription of a deleted mailbox); one not subscribed is no error."""
    user = session.require_user()
    await session.access.subscribe(user, _subscription_name(cmd.mailbox), False)
    await session.ok(cmd.tag, "UNSUBSCRIBE completed")


def _subscription_name(mailbox: str) -> str:
    """A trailing delimiter is dropped, as CREATE does (the store makes
    INBOX caseless and refuses names no mailbox could have)."""
    name = mailbox.rstrip(DELIMITER)
    if not name:
        raise Refusal("Empty mailbox name", "CANNOT")
    return name


async def append(session: ImapSession, cmd: Append) -> None:
    user = session.require_user()
    try:
        target = await session.access.status(user, cmd.mailbox)
    except NoSuchMailboxError:
        raise Refusal(f"Mailbox {cmd.mailbox} does not exist", "TRYCREATE") from None
    uids = []
    uidvalidity = target.uidvalidity
    for message in cmd.messages:
        if not message.data:
            raise Refusal("A message cannot be empty", "CANNOT")
        flags = tuple(f for f in message.flags if f != "\\Recent")
        when = message.internal_date
        seconds = int(when.timestamp()) if when is not None else None
        if seconds is not None and seconds < 0:
            seconds = 0
        appended = await session.access.append(user, target.name, message.data, flags, seconds)
        uids.append(appended.uid)
        uidvalidity = appended.uidvalidity or target.uidvalidity
    if session.selected is not None:
        await send_updates(session, expunges=False)
    code = ResponseCode.appenduid(uidvalidity, SequenceSet.of(uids))
    await session.ok(cmd.tag, "APPEND completed", code)
