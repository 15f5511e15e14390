"""One folder's pass: what to copy where, expunge and re-flag (pure).

A pass compares three things (docs/architecture.md §12):

* the source folder as this pass sees it (:class:`SourceFolderState`):
  UIDVALIDITY, the UIDs it holds, the flags of either every message or,
  with CONDSTORE (RFC 7162), only of those changed since the checkpoint's
  HIGHESTMODSEQ (``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m)``);
* the target mailbox here (:class:`TargetFolderState`): whether it exists,
  its UIDVALIDITY and UIDNEXT, every message's flags and GUID, and the
  GUIDs expunged here (tombstones);
* the folder's checkpoint from the last finished pass (:class:`Checkpoint`).

Which target message is which source message is read from the GUIDs
(:mod:`replicad.migrate.identity`): the pass's *own* messages carry the tag
of the source's UID space; every other message (LMTP after the MX switch,
a client's APPEND) is *foreign* and never touched.

Rules, in order:

1. The target is missing: create it under the source's UIDVALIDITY and copy
   every source message at its own UID.
2. The checkpoint proves the folder unchanged (CONDSTORE: HIGHESTMODSEQ,
   UIDNEXT and message count as the checkpoint has them) and the target is
   still the mailbox the checkpoint was taken against: skip (a no-op pass
   costs no EXAMINE with LIST-STATUS, one without).
3. The source's UIDVALIDITY changed since the checkpoint, the target is the
   mailbox this migration made under the old one, and it holds no foreign
   message: delete it, recreate it under the source's new
   UIDVALIDITY and copy everything (a full re-copy, never a silent mismatch).
4. Otherwise copy into the target what it lacks, as dsync does: a source
   message at its own UID where that UID is still free here (same
   UIDVALIDITY, at or above UIDNEXT, I3), the others at fresh UIDs above
   every UID used; appends go in ascending target UID.  A source
   message whose GUID was expunged here is not brought back (counted).  A
   target under another UIDVALIDITY (LMTP created INBOX first) gets every
   message at fresh UIDs: the source's clients re-download that mailbox
   (:attr:`FolderPlan.renumbered` says how many moved).  The pass's own
   messages the source no longer has, and those of an older source UID
   space, are expunged; for every own message whose source flags are known
   and differ, the deltas that make the target's flags the source's are
   applied (the source is authoritative while users live on it).

Pure: inputs are values, the output is a :class:`FolderPlan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from replicad.migrate.identity import folder_tag, message_guid, source_uid


@dataclass(frozen=True, slots=True)
class FolderStatus:
    """A source folder's numbers as STATUS (or LIST-STATUS, RFC 5819) gives them."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int | None  # None: the source has no CONDSTORE
    messages: int
    size: int | None = None  # octets of all its messages (STATUS=SIZE, RFC 8438)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the last finished pass saw of the source folder."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int | None  # None: the source has no CONDSTORE
    messages: int
    #: The UIDVALIDITY of the target mailbox the pass left (0: the source's,
    #: as records written before a target could differ have it).
    target_uidvalidity: int = 0
    #: Source UIDs below this were copied by a build that kept them as the
    #: target's UIDs under random GUIDs (before GUIDs named their source,
    #: :mod:`replicad.migrate.identity`); 0: none.  Read from those builds'
    #: checkpoints, and kept as long as both UID spaces stay.
    legacy_below: int = 0

    @property
    def target(self) -> int:
        return self.target_uidvalidity or self.uidvalidity

    def proves_unchanged(self, status: FolderStatus, target_uidvalidity: int) -> bool:
        """Whether ``status`` matches this checkpoint exactly (needs CONDSTORE)
        and the target is still the mailbox the checkpoint was taken against."""
        return (
            status.highestmodseq is not None
            and (status.uidvalidity, status.uidnext, status.highestmodseq, status.messages)
            == (self.uidvalidity, self.uidnext, self.highestmodseq, self.messages)
            and target_uidvalidity == self.target
        )


@dataclass(frozen=True, slots=True)
class SourceFolderState:
    uidvalidity: int
    uidnext: int
    highestmodseq: int | None
    uids: frozenset[int]
    #: Flags of the messages this pass fetched them for: every message, or
    #: with CHANGEDSINCE only the changed ones (``flags_complete`` False).
    flags: Mapping[int, tuple[str, ...]]
    flags_complete: bool = True
    #: The message count SELECT announced (-1: count ``uids``).
    exists: int = -1
    #: Whether ``uids`` and ``flags`` were read: not when SELECT alone already
    #: matched the checkpoint (an unchanged folder costs one EXAMINE).
    listed: bool = True
    #: RFC822.SIZE of the messages listed with their flags (the FETCH batches'
    #: weights); those missing here are asked for when they are copied.
    sizes: Mapping[int, int] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return self.exists if self.exists >= 0 else len(self.uids)

    @property
    def status(self) -> FolderStatus:
        return FolderStatus(self.uidvalidity, self.uidnext, self.highestmodseq, self.messages)


@dataclass(frozen=True, slots=True)
class TargetFolderState:
    exists: bool
    uidvalidity: int = 0
    uidnext: int = 1
    flags: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    #: GUID of every message, by UID (the same keys as ``flags``).
    guids: Mapping[int, bytes] = field(default_factory=dict)
    #: GUIDs of the messages expunged here (tombstones).
    expunged: frozenset[bytes] = frozenset()


@dataclass(frozen=True, slots=True)
class FlagChange:
    uid: int  # the target's
    add: tuple[str, ...]
    remove: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Placement:
    """A source message to copy, and the target UID it is appended at."""

    source_uid: int
    target_uid: int


@dataclass(frozen=True, slots=True)
class FolderPlan:
    create: bool = False  # create the target under the source's UIDVALIDITY
    recreate: bool = False  # delete the target first (source UIDVALIDITY changed)
    skip: bool = False  # nothing changed since the checkpoint
    copy: tuple[Placement, ...] = ()  # ascending target UIDs
    expunge: tuple[int, ...] = ()  # target UIDs
    flag_changes: tuple[FlagChange, ...] = ()
    #: Source UIDs whose message was expunged here: not brought back.
    not_reusable: tuple[int, ...] = ()

    @property
    def changes(self) -> int:
        return len(self.copy) + len(self.expunge) + len(self.flag_changes)

    @property
    def renumbered(self) -> int:
        """Messages copied at a UID other than the source's (clients re-download them)."""
        return sum(1 for p in self.copy if p.source_uid != p.target_uid)


def unchanged(source: SourceFolderState, checkpoint: Checkpoint | None) -> bool:
    """Whether the checkpoint proves the folder unchanged (needs CONDSTORE)."""
    return checkpoint is not None and checkpoint.proves_unchanged(source.status, checkpoint.target)


def place(uids: list[int], uidnext: int, *, keep_uids: bool) -> tuple[Placement, ...]:
    """Target UIDs for ``uids`` (ascending), in the order to append them: while
    ``keep_uids``, each UID at or above ``uidnext`` stays (all are free there),
    and the others get fresh UIDs above every one used (rule 4); the result
    ascends, so every append is at or above UIDNEXT (I3)."""
    kept = [uid for uid in uids if keep_uids and uid >= uidnext]
    moved = [uid for uid in uids if not (keep_uids and uid >= uidnext)]
    free = max(uidnext, kept[-1] + 1) if kept else uidnext
    return tuple(Placement(uid, uid) for uid in kept) + tuple(
        Placement(uid, free + i) for i, uid in enumerate(moved)
    )


def plan_folder(
    source: SourceFolderState,
    target: TargetFolderState,
    checkpoint: Checkpoint | None,
    *,
    user: str,
    mailbox: str,
) -> FolderPlan:
    """The plan of one folder's pass into (``user``, ``mailbox``) (rules 1-4)."""
    if not target.exists:
        return FolderPlan(create=True, copy=place(sorted(source.uids), 1, keep_uids=True))
    if checkpoint is not None and checkpoint.proves_unchanged(source.status, target.uidvalidity):
        return FolderPlan(skip=True)
    if not source.listed:
        raise ValueError("a folder whose messages were not listed cannot be planned")
    tag = folder_tag(user, mailbox, source.uidvalidity)
    old_tag = (
        folder_tag(user, mailbox, checkpoint.uidvalidity)
        if checkpoint is not None and checkpoint.uidvalidity != source.uidvalidity
        else None
    )
    same_space = target.uidvalidity == source.uidvalidity
    legacy = (
        checkpoint.legacy_below
        if checkpoint is not None and same_space and checkpoint.uidvalidity == source.uidvalidity
        else 0
    )
    own: dict[int, int] = {}  # source UID -> target UID
    stale: list[int] = []  # target UIDs of an older source UID space
    foreign = 0
    for uid, guid in target.guids.items():
        origin = source_uid(tag, guid)
        if origin is not None:
            own[origin] = uid
        elif old_tag is not None and source_uid(old_tag, guid) is not None:
            stale.append(uid)
        elif uid < legacy:
            # An earlier build's copy, at the source's UID (anything else
            # wrote at or above UIDNEXT, past every UID it had copied).
            own[uid] = uid
        else:
            foreign += 1
    # Recreated only when the source's UID space changed under a mailbox this
    # migration made and nothing else wrote to: a mailbox copied into at
    # fresh UIDs stays what it is even once its other mail is gone.
    made_here = (
        old_tag is not None and checkpoint is not None and checkpoint.target == target.uidvalidity
    )
    if not same_space and made_here and not foreign:
        return FolderPlan(
            recreate=True, create=True, copy=place(sorted(source.uids), 1, keep_uids=True)
        )
    wanted = sorted(uid for uid in source.uids if uid not in own)
    # Expunged here: a tombstone names the message's GUID, or, for an earlier
    # build's copy, it is missing below the UIDs that build had copied.
    gone_here = tuple(u for u in wanted if u < legacy or message_guid(tag, u) in target.expunged)
    if gone_here:
        skipped = set(gone_here)
        wanted = [u for u in wanted if u not in skipped]
    expunge = sorted(stale + [t for s, t in own.items() if s not in source.uids])
    changes = []
    for uid in sorted(source.flags):
        at = own.get(uid)
        if at is None:
            continue
        want, have = set(source.flags[uid]), set(target.flags.get(at, ()))
        if want != have:
            changes.append(FlagChange(at, tuple(sorted(want - have)), tuple(sorted(have - want))))
    return FolderPlan(
        copy=place(wanted, target.uidnext, keep_uids=same_space),
        expunge=tuple(expunge),
        flag_changes=tuple(changes),
        not_reusable=gone_here,
    )
