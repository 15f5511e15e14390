"""One folder's pass: what to copy, expunge and re-flag (pure).

A pass compares three things (docs/architecture.md §12):

* the source folder as this pass sees it (:class:`SourceFolderState`):
  UIDVALIDITY, the UIDs it holds, the flags of either every message or,
  with CONDSTORE (RFC 7162), only of those changed since the checkpoint's
  HIGHESTMODSEQ (``UID FETCH 1:* (FLAGS) (CHANGEDSINCE m)``);
* the target mailbox here (:class:`TargetFolderState`): whether it exists,
  its UIDVALIDITY and UIDNEXT, and the flags of every message;
* the folder's checkpoint from the last finished pass (:class:`Checkpoint`).

Rules, in order:

1. The target is missing: create it under the source's UIDVALIDITY and copy
   every source message at its own UID.
2. The target's UIDVALIDITY differs from the source's: if the target is
   empty and this migration made it (the checkpoint names the old
   UIDVALIDITY), the source's UIDVALIDITY changed -- delete and recreate
   the target and copy everything (a full re-copy, never a silent
   mismatch); if the target holds messages the migration did not bring, or
   was not made by it, the folder cannot keep the source's UIDs: the pass
   fails ``source-changed`` with the reason rather than mix two UID spaces.
3. Same UIDVALIDITY: with CONDSTORE and the checkpoint's HIGHESTMODSEQ,
   UIDNEXT and message count all unchanged, nothing happened: skip (a no-op
   pass costs one SELECT per folder).  Otherwise: copy the source UIDs the
   target lacks at or above its UIDNEXT (below it, a UID the target no
   longer has was expunged here and is never reused, I3: skipped and
   counted); expunge the target UIDs the source no longer has; for every
   message whose source flags are known and differ, apply the deltas that
   make the target's flags the source's (the source is authoritative while
   users live on it).

Pure: inputs are values, the output is a :class:`FolderPlan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from replicad.migrate.failures import FailureClass, SourceError


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the last finished pass saw of the source folder."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int | None  # None: the source has no CONDSTORE
    messages: int


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

    @property
    def messages(self) -> int:
        return self.exists if self.exists >= 0 else len(self.uids)


@dataclass(frozen=True, slots=True)
class TargetFolderState:
    exists: bool
    uidvalidity: int = 0
    uidnext: int = 1
    flags: Mapping[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlagChange:
    uid: int
    add: tuple[str, ...]
    remove: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FolderPlan:
    create: bool = False  # create the target under the source's UIDVALIDITY
    recreate: bool = False  # delete the target first (source UIDVALIDITY changed)
    skip: bool = False  # nothing changed since the checkpoint
    copy: tuple[int, ...] = ()  # source UIDs, ascending
    expunge: tuple[int, ...] = ()
    flag_changes: tuple[FlagChange, ...] = ()
    #: Source UIDs the target lacks below its UIDNEXT: expunged here, not reused.
    not_reusable: tuple[int, ...] = ()

    @property
    def changes(self) -> int:
        return len(self.copy) + len(self.expunge) + len(self.flag_changes)


def unchanged(source: SourceFolderState, checkpoint: Checkpoint | None) -> bool:
    """Whether the checkpoint proves the folder unchanged (needs CONDSTORE)."""
    return (
        checkpoint is not None
        and source.highestmodseq is not None
        and checkpoint.highestmodseq == source.highestmodseq
        and checkpoint.uidvalidity == source.uidvalidity
        and checkpoint.uidnext == source.uidnext
        and checkpoint.messages == source.messages
    )


def plan_folder(
    source: SourceFolderState, target: TargetFolderState, checkpoint: Checkpoint | None
) -> FolderPlan:
    """The plan of one folder's pass (module docstring, rules 1-3)."""
    if not target.exists:
        return FolderPlan(create=True, copy=tuple(sorted(source.uids)))
    if target.uidvalidity != source.uidvalidity:
        made_here = checkpoint is not None and checkpoint.uidvalidity == target.uidvalidity
        if made_here:
            return FolderPlan(recreate=True, create=True, copy=tuple(sorted(source.uids)))
        if not target.flags and target.uidnext == 1:
            raise SourceError(
                FailureClass.SOURCE_CHANGED,
                f"target mailbox exists empty under UIDVALIDITY {target.uidvalidity}, "
                f"the source's is {source.uidvalidity}",
            )
        raise SourceError(
            FailureClass.SOURCE_CHANGED,
            f"target mailbox holds messages under UIDVALIDITY {target.uidvalidity}, "
            f"the source's is {source.uidvalidity}: cannot keep the source's UIDs",
        )
    if unchanged(source, checkpoint):
        return FolderPlan(skip=True)
    if not source.listed:
        raise ValueError("a folder whose messages were not listed cannot be planned")
    missing = sorted(uid for uid in source.uids if uid not in target.flags)
    copy = tuple(uid for uid in missing if uid >= target.uidnext)
    not_reusable = tuple(uid for uid in missing if uid < target.uidnext)
    expunge = tuple(sorted(uid for uid in target.flags if uid not in source.uids))
    changes = []
    for uid in sorted(source.flags):
        if uid not in target.flags:
            continue
        want, have = set(source.flags[uid]), set(target.flags[uid])
        if want != have:
            changes.append(FlagChange(uid, tuple(sorted(want - have)), tuple(sorted(have - want))))
    return FolderPlan(
        copy=copy, expunge=expunge, flag_changes=tuple(changes), not_reusable=not_reusable
    )
