"""One user's pass over every folder of the source (trio glue).

The source's folder list comes with each folder's STATUS when the source
offers LIST-STATUS (RFC 5819): a folder whose STATUS equals its checkpoint,
while the target is still the mailbox the checkpoint was taken against,
is skipped without a round trip of its own (a no-op pass is one LIST per
user).  Every other folder, superiors first
(:func:`~replicad.migrate.names.map_folders`): EXAMINE it on the source,
read this node's copy, ask the pure planner
(:func:`~replicad.migrate.planner.plan_folder`) and carry the plan out
through the write path: recreate, create under the source's UIDVALIDITY,
expunge, re-flag, then copy in FETCH batches (pipelined: the next batch is
fetched while one is written) at the UIDs the plan placed them, each
message under its migration GUID (:mod:`~replicad.migrate.identity`).
After each folder its counts and checkpoint go to ``on_folder``.  A pass
cut at any point (``kill -9``, the source gone) resumes where its folders
stand: the plan is made from what the target holds and which source
message each of its messages is, never from what a pass believed it had
written, so nothing is copied twice and nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from replicad.errors import ReplicadError, UidNotAboveError
from replicad.migrate.failures import FailureClass, SourceError, classify_target_error
from replicad.migrate.identity import folder_tag, message_guid
from replicad.migrate.jobs import Counts
from replicad.migrate.names import map_flags, map_folders
from replicad.migrate.planner import Checkpoint, FolderPlan, SourceFolderState, plan_folder
from replicad.migrate.source import (
    FETCH_BATCH_BYTES,
    FETCH_BATCH_MESSAGES,
    FetchedMessage,
    SourceConnection,
    fetch_batches,
)
from replicad.migrate.target import TargetWrites, target_state, target_uidvalidities
from replicad.store.index import AppendRequest
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet

log = logging.getLogger("replicad.migrate")

#: Persist counts and checkpoint after each folder; report bytes per batch.
OnFolder = Callable[[Counts, dict[str, Checkpoint]], Awaitable[None]]
OnBytes = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class FolderOutcome:
    counts: Counts
    checkpoint: Checkpoint


class UserPass:
    def __init__(
        self,
        source: SourceConnection,
        writes: TargetWrites,
        store: MailStore,
        user: str,
        *,
        on_folder: OnFolder,
        on_bytes: OnBytes,
    ) -> None:
        self.source = source
        self.writes = writes
        self.store = store
        self.user = user
        self.on_folder = on_folder
        self.on_bytes = on_bytes

    async def run(self, checkpoints: dict[str, Checkpoint]) -> None:
        listing = await self.source.folders()
        folders = map_folders(listing.folders, self.source.prefix)
        here = await target_uidvalidities(self.store, self.user)
        for wire, name in folders.items():
            checkpoint = checkpoints.get(wire)
            status = listing.statuses.get(wire)
            if (
                checkpoint is not None
                and status is not None
                and name in here
                and checkpoint.proves_unchanged(status, here[name])
            ):
                continue  # LIST-STATUS proved it unchanged: no EXAMINE, nothing to persist
            # A folder new here and small enough (STATUS=SIZE) comes in one FETCH.
            whole = (
                name not in here
                and status is not None
                and status.size is not None
                and status.size <= FETCH_BATCH_BYTES
                and status.messages <= FETCH_BATCH_MESSAGES
            )
            try:
                outcome = await self.folder(wire, name, checkpoint, whole=whole)
            except UidNotAboveError as exc:
                # Our copy lags the mailbox's master (a write forwarded
                # elsewhere not yet replicated back): re-plan later.
                raise SourceError(FailureClass.SOURCE_CHANGED, str(exc)) from None
            except SourceError:
                raise
            except ReplicadError as exc:
                raise SourceError(classify_target_error(exc), f"{name}: {exc}") from None
            if outcome.counts == Counts() and checkpoint == outcome.checkpoint:
                continue  # nothing changed: nothing to persist (a no-op pass stays cheap)
            await self.on_folder(
                Counts(folders=len(folders)).plus(outcome.counts), {wire: outcome.checkpoint}
            )

    async def folder(
        self, wire: str, name: str, checkpoint: Checkpoint | None, *, whole: bool = False
    ) -> FolderOutcome:
        """One folder's pass; ``whole``: the folder is fetched with its EXAMINE
        in one FETCH (it is small and this node had no such mailbox when the
        pass began; the plan still decides from what the target holds)."""
        since = checkpoint.highestmodseq if checkpoint is not None else None
        fetched: list[FetchedMessage] = []
        if whole:
            source, fetched = await self.source.examine_and_fetch(wire)
        target = await target_state(self.store, self.user, name)
        if not whole:
            # The checkpoint may spare listing the folder only while the target
            # is still the mailbox the checkpoint was taken for.
            known = (
                checkpoint
                if checkpoint is not None
                and target.exists
                and target.uidvalidity == checkpoint.target
                else None
            )
            source = await self.source.examine(wire, since, known)
        plan = plan_folder(source, target, checkpoint, user=self.user, mailbox=name)
        done = Counts()
        target_uidvalidity = target.uidvalidity
        if not plan.skip:
            done = await self._apply(name, source, plan, {m.uid: m for m in fetched})
            if plan.create:
                target_uidvalidity = source.uidvalidity
        if plan.renumbered:
            log.warning(
                "migrate.renumbered",
                extra={
                    "kv": {
                        "user": self.user,
                        "mailbox": name,
                        "messages": plan.renumbered,
                        "source_uidvalidity": source.uidvalidity,
                        "target_uidvalidity": target_uidvalidity,
                        "note": "the mailbox held other mail: these messages have new UIDs "
                        "here, the source's clients re-download them",
                    }
                },
            )
        # An earlier build's copies stay recognised while both UID spaces stay.
        legacy = (
            checkpoint.legacy_below
            if checkpoint is not None
            and not plan.recreate
            and checkpoint.uidvalidity == source.uidvalidity == target_uidvalidity
            else 0
        )
        mark = Checkpoint(
            source.uidvalidity,
            source.uidnext,
            source.highestmodseq,
            source.messages,
            0 if target_uidvalidity == source.uidvalidity else target_uidvalidity,
            legacy,
        )
        return FolderOutcome(done, mark)

    async def _apply(
        self,
        name: str,
        source: SourceFolderState,
        plan: FolderPlan,
        fetched: dict[int, FetchedMessage],
    ) -> Counts:
        user, writes = self.user, self.writes
        if plan.recreate:
            await writes.delete_mailbox(user, name)
        if plan.create:
            await writes.create_mailbox_at(user, name, source.uidvalidity)
        if plan.expunge:
            await writes.expunge(user, name, UidSet.of(plan.expunge))
        by_delta: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
        dropped = 0
        for change in plan.flag_changes:
            add = map_flags(change.add)
            dropped += add.dropped
            remove = map_flags(change.remove)
            if add.flags or remove.flags:
                by_delta.setdefault((add.flags, remove.flags), []).append(change.uid)
        changed = 0
        for (add_flags, remove_flags), uids in by_delta.items():
            if add_flags:
                await writes.store_flags(user, name, UidSet.of(uids), "add", add_flags)
            if remove_flags:
                await writes.store_flags(user, name, UidSet.of(uids), "remove", remove_flags)
            changed += len(uids)
        copied = octets = 0
        if plan.copy:
            copied, octets, dropped_here = await self._copy(name, source, plan, fetched)
            dropped += dropped_here
        return Counts(0, copied, len(plan.expunge), changed, octets, dropped)

    async def _copy(
        self,
        name: str,
        source: SourceFolderState,
        plan: FolderPlan,
        fetched: dict[int, FetchedMessage],
    ) -> tuple[int, int, int]:
        """Copy ``plan.copy`` in FETCH batches; (messages, octets, keywords dropped).
        ``fetched``: messages the folder's EXAMINE brought already (taken out
        as they are used).

        Pipelined: the next batch is fetched from the source while this one
        is written here (a single user's pass would otherwise leave the
        source idle during every commit).  A rendezvous channel: at most one
        batch waits while one is written, so memory holds two batches."""
        tag = folder_tag(self.user, name, source.uidvalidity)
        at = {p.source_uid: p.target_uid for p in plan.copy}
        wanted = [p.source_uid for p in plan.copy]
        sizes = dict(source.sizes)
        unknown = [uid for uid in wanted if uid not in sizes]
        if unknown:
            sizes.update(await self.source.sizes(unknown))
        dropped = copied = octets = 0
        send, receive = trio.open_memory_channel[tuple[list[AppendRequest], int]](0)

        async def fetch_all() -> None:
            nonlocal dropped
            async with send:
                for batch in fetch_batches(sizes, wanted):
                    items = []
                    size = 0
                    # Fetched already with the folder's EXAMINE (whole), or now.
                    have = [fetched.pop(uid) for uid in batch if uid in fetched]
                    if len(have) < len(batch):
                        have = await self.source.fetch(batch)
                    for message in have:
                        flags = map_flags(message.flags)
                        dropped += flags.dropped
                        size += len(message.body)
                        items.append(
                            AppendRequest(
                                message.body,
                                flags.flags,
                                message.internaldate,
                                message_guid(tag, message.uid),
                                at[message.uid],
                            )
                        )
                    await send.send((items, size))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch_all)
                async with receive:
                    async for items, size in receive:
                        if items:
                            await self.writes.import_messages(self.user, name, items)
                        copied += len(items)
                        octets += size
                        self.on_bytes(size)
                        del items  # the batch's bodies go as soon as they are stored
        except BaseExceptionGroup as group:
            # The source gone mid-fetch is a SourceError to classify (network,
            # retried), not an internal error: the nursery's group is unwrapped.
            raise _sole_error(group) from None
        return copied, octets, dropped


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error of a nursery's ``group`` (its other members being the
    cancellations it caused), or the group itself."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group
