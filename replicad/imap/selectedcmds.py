"""Commands on the selected mailbox (RFC 3501 §6.3.1-§6.3.2, §6.4; RFC 4315
UIDPLUS, RFC 6851 MOVE, RFC 7162 CONDSTORE/QRESYNC, RFC 4731 ESEARCH,
RFC 5182 SEARCHRES, RFC 3691 UNSELECT).

Sequence numbers are the session's (:class:`~replicad.imap.view.MailboxView`);
every write goes through :class:`~replicad.imap.mailaccess.MailAccess` by UID.
After a command, changes made elsewhere are reported; EXPUNGE only after
commands that allow it (never after FETCH, STORE or SEARCH by number, RFC
3501 §7.4.1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from replicad.errors import NoSuchMailboxError
from replicad.imap.commands import (
    Check,
    Close,
    Copy,
    Expunge,
    Fetch,
    FetchAttribute,
    FetchSimple,
    Move,
    Select,
    Store,
    StoreMode,
    Unselect,
)
from replicad.imap.fetching import (
    MessageBytes,
    UnparsedFetch,
    fetch_values,
    needs_body,
    sets_seen,
)
from replicad.imap.mailboxindex import MessageMeta
from replicad.imap.readahead import ReadAhead, reading_ahead, selected_index
from replicad.imap.responses import (
    ResponseCode,
    Value,
    flag_list,
    render_exists,
    render_fetch,
    render_flags,
    render_recent,
    render_vanished,
)
from replicad.imap.searchcmd import resolve
from replicad.imap.sections import UnknownTransferEncodingError
from replicad.imap.sequences import SequenceSet
from replicad.imap.session import ImapSession, Refusal, Selected
from replicad.imap.updates import (
    SYSTEM_FLAGS,
    announce_keywords,
    send_updates,
    send_view_updates,
    shown_flags,
)
from replicad.imap.view import MailboxView
from replicad.store.index import FlagMode
from replicad.uidset import UidSet

log = logging.getLogger("replicad.imap")

_MODES: dict[StoreMode, FlagMode] = {
    StoreMode.ADD: "add",
    StoreMode.REMOVE: "remove",
    StoreMode.REPLACE: "replace",
}


#: Metadata FETCH lines joined into one send (one output call per batch).
FETCH_LINES_PER_SEND = 256


# -- SELECT / EXAMINE -------------------------------------------------------


async def select(session: ImapSession, cmd: Select) -> None:
    user = session.require_user()
    if session.selected is not None:
        session.select(None)
        # RFC 7162 §3.2.11 / RFC 9051 §6.3.2: the previous mailbox is closed.
        await session.untagged_ok("Previous mailbox closed", ResponseCode.simple("CLOSED"))
    if cmd.qresync is not None and not session.qresync:
        raise Refusal("QRESYNC must be ENABLEd first", bad=True)
    if cmd.condstore or cmd.qresync is not None:
        session.condstore = True  # SELECT reports HIGHESTMODSEQ itself
    if not await session.access.catch_up_with_master(user, cmd.mailbox):
        log.info(
            "imap.select_behind_master",
            extra={"kv": {"session": session.session_id, "user": user}},
        )
    state, index = await session.access.current_index(user, cmd.mailbox)
    known = cmd.qresync
    floor = known.modseq if known is not None and known.uidvalidity == state.uidvalidity else 0
    view = MailboxView.of_index(index, uidnext=state.uidnext, floor_modseq=floor)
    keywords = index.keywords
    await session.send(render_flags([*SYSTEM_FLAGS, *keywords]))
    permanent = () if cmd.read_only else (*SYSTEM_FLAGS, *keywords)
    code = ResponseCode.permanentflags(permanent, new_keywords=not cmd.read_only)
    await session.untagged_ok("Flags permitted", code)
    claims = session.access.recent
    if cmd.read_only:  # EXAMINE changes nothing, \Recent included (RFC 3501 §6.3.2)
        recent: set[int] = set()
        recent_count = claims.count(state.guid, state.uidvalidity, index.uids)
    else:
        recent = claims.claim(state.guid, state.uidvalidity, index.uids)
        recent_count = len(recent)
    await session.send(render_exists(view.exists))
    await session.send(render_recent(recent_count))
    # The view is the snapshot itself until the session changes it.
    first_unseen = index.first_unseen
    if first_unseen is not None:
        await session.untagged_ok("First unseen", ResponseCode.number("UNSEEN", first_unseen))
    await session.untagged_ok("UIDs valid", ResponseCode.uidvalidity(state.uidvalidity))
    uidnext = view.report_uidnext(state.uidnext)
    await session.untagged_ok("Predicted next UID", ResponseCode.uidnext(uidnext))
    modseq = view.report_highestmodseq(state.highestmodseq)
    await session.untagged_ok("Highest", ResponseCode.highestmodseq(modseq))
    session.select(
        Selected(
            state.name,
            state.guid,
            view,
            cmd.read_only,
            recent=recent,
            keywords=set(keywords),
            told_exists=view.exists,
        )
    )
    if known is not None and floor:
        await _qresync_changes(session, view, known.modseq, known.known_uids)
    access = "READ-ONLY" if cmd.read_only else "READ-WRITE"
    verb = "EXAMINE" if cmd.read_only else "SELECT"
    await session.ok(cmd.tag, f"{verb} completed", ResponseCode.simple(access))


async def _qresync_changes(
    session: ImapSession, view: MailboxView, modseq: int, known: SequenceSet | None
) -> None:
    """RFC 7162 §3.2.5.1: what the client missed since ``modseq``: VANISHED
    (EARLIER) from this node's tombstones, then FETCH for changed messages."""
    selected = session.require_selected()
    user = session.require_user()
    ranges = known.resolve(view.highest_uid) if known is not None else None
    gone = [
        uid
        for uid, _, at in await session.access.tombstones(user, selected.name)
        if at > modseq and (ranges is None or any(lo <= uid <= hi for lo, hi in ranges))
    ]
    await session.send(render_vanished(gone, earlier=True))
    for uid in view.uids:
        if view.modseq_of(uid) > modseq:
            seq = view.seq_of(uid)
            assert seq is not None
            await announce_keywords(session, view.flags_of(uid))
            items: list[tuple[str, Value]] = [
                ("UID", uid),
                ("FLAGS", flag_list(shown_flags(selected, uid, view.flags_of(uid)))),
                ("MODSEQ", (view.modseq_of(uid),)),
            ]
            await session.send(render_fetch(seq, items))


async def close(session: ImapSession, cmd: Close) -> None:
    """RFC 3501 §6.4.2: expunge ``\\Deleted`` silently (read-write), deselect."""
    selected = session.require_selected()
    if not selected.read_only:
        deleted = await _deleted_uids(session, None)
        if deleted:
            await session.access.expunge(session.require_user(), selected.name, deleted)
    session.select(None)
    await session.ok(cmd.tag, "CLOSE completed")


async def unselect(session: ImapSession, cmd: Unselect) -> None:
    session.require_selected()
    session.select(None)
    await session.ok(cmd.tag, "UNSELECT completed")


async def check(session: ImapSession, cmd: Check) -> None:
    await send_updates(session, expunges=True)
    await session.ok(cmd.tag, "CHECK completed")


# -- EXPUNGE ---------------------------------------------------------------------


async def _deleted_uids(session: ImapSession, within: list[int] | None) -> UidSet | None:
    selected = session.require_selected()
    index = await selected_index(session)
    if index is None:
        return None
    wanted = set(within) if within is not None else None
    uids = [
        uid
        for at, uid in enumerate(index.uids)
        if "\\Deleted" in index.flags_at(at)
        and (wanted is None or uid in wanted)
        and selected.view.seq_of(uid) is not None
    ]
    return UidSet.of(uids) if uids else None


async def expunge(session: ImapSession, cmd: Expunge) -> None:
    selected = session.require_selected()
    if selected.read_only:
        raise Refusal("Mailbox is read-only", "READ-ONLY")
    within = resolve(session, cmd.uids, uid=True) if cmd.uids is not None else None
    deleted = await _deleted_uids(session, within)
    if deleted is not None:
        gone = await session.access.expunge(session.require_user(), selected.name, deleted)
        selected.view.expunge_own(uid for uid, _ in gone.expunged)
        if not gone.expunged:  # relayed answer without the list: the UIDs asked
            selected.view.expunge_own(deleted)
    await send_updates(session, expunges=True)
    await session.ok(cmd.tag, "EXPUNGE completed")


# -- FETCH -----------------------------------------------------------------------


async def fetch(session: ImapSession, cmd: Fetch) -> None:
    selected = session.require_selected()
    user = session.require_user()
    uids = resolve(session, cmd.sequence, uid=cmd.uid)
    if cmd.changed_since is not None or any(
        isinstance(i, FetchSimple) and i.attribute is FetchAttribute.MODSEQ for i in cmd.items
    ):
        await session.enable_condstore()
    if cmd.vanished:
        if not (session.qresync and cmd.uid and cmd.changed_since is not None):
            raise Refusal("VANISHED needs QRESYNC, UID FETCH and CHANGEDSINCE", bad=True)
        await _vanished_earlier(session, cmd.sequence, cmd.changed_since)
    index = await selected_index(session) if uids else None
    infos = index.metas(uids) if index is not None else {}
    newly_seen: set[int] = set()
    if sets_seen(cmd.items) and not selected.read_only:
        unseen = [u for u in uids if u in infos and "\\Seen" not in infos[u].flags]
        newly_seen.update(unseen)
        if unseen:
            await session.access.store_flags(
                user, selected.name, UidSet.of(unseen), "add", ("\\Seen",), None
            )
            infos.update(await _infos(session, unseen))
    body = needs_body(cmd.items)
    wanted = [
        u
        for u in uids
        if u in infos and (cmd.changed_since is None or infos[u].modseq > cmd.changed_since)
    ]
    # The view numbers its messages from this very snapshot and changed
    # nothing since: noting each message's flags in it would change nothing.
    settled = index is not None and not newly_seen and selected.view.agrees_with(index)
    lines = _FetchLines(cmd, uids, infos, newly_seen, settled)
    if body:
        async with reading_ahead(session, wanted, {u: infos[u].size for u in wanted}) as bodies:
            missing = await _fetch_lines(session, lines, bodies)
    else:
        missing = await _fetch_lines(session, lines, None)
    await send_updates(session, expunges=cmd.uid)
    if missing:
        await session.ok(cmd.tag, "FETCH completed; some messages were expunged meanwhile")
    else:
        await session.ok(cmd.tag, "FETCH completed")


@dataclass(frozen=True, slots=True)
class _FetchLines:
    """What the FETCH lines are made of."""

    cmd: Fetch
    uids: list[int]
    infos: dict[int, MessageMeta]
    #: Messages this FETCH has just set ``\\Seen`` on.
    newly_seen: set[int]
    #: The view already says what ``infos`` say (:meth:`MailboxView.agrees_with`).
    settled: bool


async def _fetch_lines(session: ImapSession, lines: _FetchLines, bodies: ReadAhead | None) -> bool:
    """Send the ``* n FETCH`` lines of ``lines.uids``; whether some were missing."""
    selected = session.require_selected()
    cmd, infos, newly_seen = lines.cmd, lines.infos, lines.newly_seen
    # RFC 7162 §3.2.4 (and what QRESYNC clients rely on): once QRESYNC is
    # on, every FETCH answer names its UID.  RFC 7162 §3.1.4.1 and what
    # clients expect of Dovecot: once CONDSTORE is on, every FETCH answer
    # carries MODSEQ.
    with_uid = cmd.uid or session.qresync
    unparsed = (
        UnparsedFetch(cmd.items, with_uid=with_uid, with_modseq=session.condstore)
        if UnparsedFetch.answers(cmd.items)
        else None
    )
    announced: set[tuple[str, ...]] = set()
    batch: list[bytes] = []  # FETCH lines not sent yet
    missing = False
    for uid in lines.uids:
        info = infos.get(uid)
        seq = selected.view.seq_of(uid)
        if info is None or seq is None:
            missing = True
            continue
        if cmd.changed_since is not None and info.modseq <= cmd.changed_since:
            continue
        if not lines.settled:
            selected.view.note_own_flags(uid, info.flags, info.modseq)
        raw = await bodies.get(uid) if bodies is not None else None
        if bodies is not None and raw is None:
            missing = True
            continue
        if info.flags not in announced:
            announced.add(info.flags)
            await session.send(b"".join(batch))  # the lines before come first
            batch.clear()
            await announce_keywords(session, info.flags)
        if unparsed is not None:
            flags = shown_flags(selected, uid, info.flags)
            if raw is not None:
                for part in unparsed.render_parts(seq, info, flags, raw):
                    await session.send(part)
                continue
            batch.append(unparsed.render(seq, info, flags, None))
            if len(batch) >= FETCH_LINES_PER_SEND:
                await session.send(b"".join(batch))
                batch.clear()
            continue
        try:
            values = fetch_values(
                cmd.items,
                info,
                shown_flags(selected, uid, info.flags),
                MessageBytes(raw) if raw is not None else None,
                with_uid=with_uid,
                with_modseq=session.condstore,
                # RFC 3501 §6.4.5: a FETCH that sets \Seen reports the new FLAGS.
                seen_now=uid in newly_seen,
            )
        except UnknownTransferEncodingError as exc:
            raise Refusal(str(exc), "UNKNOWN-CTE") from None
        await session.send(render_fetch(seq, values))
    await session.send(b"".join(batch))
    return missing


async def _infos(session: ImapSession, uids: list[int]) -> dict[int, MessageMeta]:
    if not uids:
        return {}
    index = await selected_index(session)
    return {} if index is None else index.metas(uids)


async def _vanished_earlier(session: ImapSession, within: SequenceSet, since: int) -> None:
    selected = session.require_selected()
    ranges = within.resolve(max(selected.view.highest_uid, 1)) if not within.saved else []
    gone = [
        uid
        for uid, _, at in await session.access.tombstones(session.require_user(), selected.name)
        if at > since and any(lo <= uid <= hi for lo, hi in ranges)
    ]
    await session.send(render_vanished(gone, earlier=True))


# -- STORE -----------------------------------------------------------------------


async def store(session: ImapSession, cmd: Store) -> None:
    selected = session.require_selected()
    user = session.require_user()
    if selected.read_only:
        raise Refusal("Mailbox is read-only", "READ-ONLY")
    uids = resolve(session, cmd.sequence, uid=cmd.uid)
    if cmd.unchanged_since is not None:
        await session.enable_condstore()
    flags = tuple(f for f in cmd.flags if f != "\\Recent")
    rejected: set[int] = set()
    if uids:
        changed = await session.access.store_flags(
            user, selected.name, UidSet.of(uids), _MODES[cmd.mode], flags, cmd.unchanged_since
        )
        rejected = set(changed.rejected)
    infos = await _infos(session, uids)
    for uid in uids:
        info = infos.get(uid)
        seq = selected.view.seq_of(uid)
        if info is None or seq is None or uid in rejected:
            continue
        selected.view.note_own_flags(uid, info.flags, info.modseq)
        if cmd.silent and not session.condstore:
            continue
        items: list[tuple[str, Value]] = []
        if cmd.uid or session.condstore:
            # RFC 7162 §3.1: with CONDSTORE on, FETCH answers to STORE carry UID and MODSEQ.
            items.append(("UID", uid))
        if not cmd.silent:
            await announce_keywords(session, info.flags)
            items.append(("FLAGS", flag_list(shown_flags(selected, uid, info.flags))))
        if session.condstore:
            items.append(("MODSEQ", (info.modseq,)))
        await session.send(render_fetch(seq, items))
    await send_updates(session, expunges=cmd.uid)
    code = None
    if rejected:
        numbers = sorted(rejected) if cmd.uid else sorted(
            n for n in (selected.view.seq_of(u) for u in rejected) if n is not None
        )
        code = ResponseCode.modified(SequenceSet.of(numbers))
    text = "Conditional STORE failed" if rejected else "STORE completed"
    await session.ok(cmd.tag, text, code)


# -- COPY / MOVE ------------------------------------------------------------------


async def copy(session: ImapSession, cmd: Copy) -> None:
    await _copy(session, cmd.tag, cmd.sequence, cmd.uid, cmd.mailbox, move=False)


async def move(session: ImapSession, cmd: Move) -> None:
    await _copy(session, cmd.tag, cmd.sequence, cmd.uid, cmd.mailbox, move=True)


async def _copy(
    session: ImapSession, tag: str, sequence: SequenceSet, uid: bool, dest: str, *, move: bool
) -> None:
    selected = session.require_selected()
    user = session.require_user()
    if move and selected.read_only:
        raise Refusal("Mailbox is read-only", "READ-ONLY")
    uids = resolve(session, sequence, uid=uid)
    try:
        target = await session.access.status(user, dest)
    except NoSuchMailboxError:
        raise Refusal(f"Mailbox {dest} does not exist", "TRYCREATE") from None
    code = None
    if uids:
        copied = await session.access.copy(user, selected.name, UidSet.of(uids), target.name)
        pairs = list(zip(copied.source_uids, (m.uid for m in copied.appended), strict=True))
        if pairs:
            uidvalidity = copied.appended[0].uidvalidity or target.uidvalidity
            code = ResponseCode.copyuid(
                uidvalidity,
                SequenceSet(tuple((s, s) for s, _ in pairs)),
                SequenceSet(tuple((d, d) for _, d in pairs)),
            )
        if move:
            if code is not None:
                # RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
                await session.untagged_ok("Moved", code)
                code = None
            moved = UidSet.of(s for s, _ in pairs)
            if pairs:
                await session.access.expunge(user, selected.name, moved)
                selected.view.expunge_own(moved)
    updates = selected.view.flush_expunges(vanished=session.qresync) if move else []
    await send_view_updates(session, updates)
    await send_updates(session, expunges=move or uid)
    await session.ok(tag, "MOVE completed" if move else "COPY completed", code)
