"""SEARCH / UID SEARCH (RFC 3501 §6.4.4, RFC 4731 ESEARCH, RFC 5182
SEARCHRES, RFC 7162 §3.1.5 MODSEQ), and how a command's message set
becomes UIDs (:func:`resolve`).

The criteria are evaluated in two passes (:mod:`replicad.imap.searching`):
first on the index alone, where flag, date, size, UID and modseq keys
decide; only the messages a text key still has to decide are read.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

from replicad.imap.commands import Search, SearchReturn
from replicad.imap.mimeparse import MimePart, parse_message
from replicad.imap.readahead import reading_ahead, selected_index
from replicad.imap.responses import SearchResult, render_esearch, render_search
from replicad.imap.searching import Candidate, SearchScope, matches
from replicad.imap.searchkeys import (
    AllKey,
    AndKey,
    ModSeqKey,
    NotKey,
    OrKey,
    SearchKey,
    SequenceKey,
    UidKey,
)
from replicad.imap.sequences import SequenceSet
from replicad.imap.session import ImapSession, Refusal
from replicad.imap.textsearch import body_contains, header_contains, sent_date, text_contains
from replicad.imap.updates import send_updates


def resolve(session: ImapSession, sequence: SequenceSet, *, uid: bool) -> list[int]:
    """The UIDs of the session's view that ``sequence`` names, ascending.

    By number, a number above the message count is an error (RFC 3501
    §9 ``seq-number``); by UID, UIDs not in the mailbox are ignored.
    ``$`` is the saved search result (RFC 5182).
    """
    view = session.require_selected().view
    if sequence.saved:
        return [u for u in session.saved_uids if view.seq_of(u) is not None]
    if uid:
        out: list[int] = []
        for lo, hi in sequence.resolve(view.highest_uid):
            out.extend(view.uids_in_range(lo, hi))
        return out
    if view.exists == 0:
        if sequence.has_star:
            return []
        raise Refusal("No messages in the mailbox", bad=True)
    out = []
    for lo, hi in sequence.resolve(view.exists):
        if hi > view.exists:
            raise Refusal(f"Message sequence number {hi} is above {view.exists}", bad=True)
        out.extend(view.uids[lo - 1 : hi])
    return out


class _NeedText(Exception):
    """Raised by the first pass when a text key must read the message."""


@dataclass(slots=True)
class _Text:
    """:class:`~replicad.imap.searching.MessageText` over a message's bytes."""

    raw: bytes
    _tree: MimePart | None = field(default=None, init=False)

    @property
    def tree(self) -> MimePart:
        if self._tree is None:
            self._tree = parse_message(self.raw)
        return self._tree

    def header_contains(self, name: str, value: str) -> bool:
        return header_contains(self.tree, name.encode("utf-8"), value)

    def body_contains(self, value: str) -> bool:
        return body_contains(self.raw, self.tree, value)

    def text_contains(self, value: str) -> bool:
        return text_contains(self.raw, self.tree, value)

    def sent_date(self) -> datetime.date | None:
        return sent_date(self.tree)


def _no_text() -> _Text:
    raise _NeedText


def _loaded(text: _Text) -> Callable[[], _Text]:
    return lambda: text


def _saved_replaced(key: SearchKey, saved: list[int]) -> SearchKey:
    """``$`` in the criteria stands for the saved result (RFC 5182 §2.1)."""
    if isinstance(key, SequenceKey | UidKey):
        numbers = key.numbers if isinstance(key, SequenceKey) else key.uids
        if numbers.saved:
            return UidKey(SequenceSet.of(saved)) if saved else NotKey(AllKey())
        return key
    if isinstance(key, NotKey):
        return NotKey(_saved_replaced(key.key, saved))
    if isinstance(key, OrKey):
        return OrKey(_saved_replaced(key.left, saved), _saved_replaced(key.right, saved))
    if isinstance(key, AndKey):
        return AndKey(tuple(_saved_replaced(k, saved) for k in key.keys))
    return key


def _uses_modseq(key: SearchKey) -> bool:
    if isinstance(key, ModSeqKey):
        return True
    if isinstance(key, NotKey):
        return _uses_modseq(key.key)
    if isinstance(key, OrKey):
        return _uses_modseq(key.left) or _uses_modseq(key.right)
    if isinstance(key, AndKey):
        return any(_uses_modseq(k) for k in key.keys)
    return False


async def search(session: ImapSession, cmd: Search) -> None:
    selected = session.require_selected()
    view = selected.view
    key = _saved_replaced(cmd.criteria, session.saved_uids)
    with_modseq = _uses_modseq(key)
    if with_modseq:
        await session.enable_condstore()
    index = await selected_index(session)
    infos = index.metas(index.uids) if index is not None else {}
    scope = SearchScope(view.exists, view.highest_uid)
    found: list[tuple[int, int, int]] = []  # (uid, seq, modseq)
    undecided: list[Candidate] = []  # a text key must read these
    for info in infos.values():
        seq = view.seq_of(info.uid)
        if seq is None:
            continue  # arrived after the client was last told; not numbered yet
        candidate = Candidate(info, seq, info.uid in selected.recent)
        try:
            if matches(key, candidate, scope, _no_text):
                found.append((info.uid, seq, info.modseq))
        except _NeedText:
            undecided.append(candidate)
    if undecided:
        uids = [c.info.uid for c in undecided]
        sizes = {c.info.uid: c.info.size for c in undecided}
        async with reading_ahead(session, uids, sizes) as bodies:
            for candidate in undecided:
                raw = await bodies.get(candidate.info.uid)
                if raw is not None and matches(key, candidate, scope, _loaded(_Text(raw))):
                    found.append((candidate.info.uid, candidate.seq, candidate.info.modseq))
        found.sort(key=lambda hit: hit[1])
    numbers = [uid if cmd.uid else seq for uid, seq, _ in found]
    highest = _modseq_of(found, cmd.returns) if with_modseq else None
    if cmd.returns is None:
        await session.send(render_search(numbers, modseq=highest))
    else:
        await _esearch(session, cmd, numbers, [u for u, _, _ in found], highest)
    await send_updates(session, expunges=cmd.uid)
    await session.ok(cmd.tag, "SEARCH completed")


def _modseq_of(
    found: list[tuple[int, int, int]], returns: frozenset[SearchReturn] | None
) -> int | None:
    """RFC 7162 §3.1.5 with RFC 4731: the highest modseq of the messages
    returned -- only the MIN and/or MAX one when nothing else is asked."""
    if not found:
        return None
    wanted = (returns or frozenset()) - {SearchReturn.SAVE}
    if wanted and wanted <= {SearchReturn.MIN, SearchReturn.MAX}:
        ends = []
        if SearchReturn.MIN in wanted:
            ends.append(found[0])
        if SearchReturn.MAX in wanted:
            ends.append(found[-1])
        return max(m for _, _, m in ends)
    return max(m for _, _, m in found)


async def _esearch(
    session: ImapSession,
    cmd: Search,
    numbers: list[int],
    uids: list[int],
    highest: int | None,
) -> None:
    returns = cmd.returns or frozenset()
    if SearchReturn.SAVE in returns:
        session.saved_uids = uids
    wanted = returns - {SearchReturn.SAVE}
    if not wanted:
        if SearchReturn.SAVE in returns:
            return  # RFC 5182 §2.4: SAVE alone returns nothing
        wanted = frozenset({SearchReturn.ALL})
    result = SearchResult(
        min=min(numbers) if numbers and SearchReturn.MIN in wanted else None,
        max=max(numbers) if numbers and SearchReturn.MAX in wanted else None,
        all=tuple(numbers) if numbers and SearchReturn.ALL in wanted else None,
        count=len(numbers) if SearchReturn.COUNT in wanted else None,
        modseq=highest,
    )
    await session.send(render_esearch(cmd.tag, cmd.uid, result))
