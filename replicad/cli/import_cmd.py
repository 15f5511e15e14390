"""``replicad import -u USER MAILDIR``: bulk load a Maildir++ tree.

Messages are read and sent in batches bounded both in count and in bytes, so
the client's memory stays bounded whatever the size of the tree; each batch
is one ``append_many`` request, i.e. one store transaction (all of it is
durable, or none).  Missing mailboxes are created.  A message that cannot be
imported (vanished meanwhile, larger than admin.max_message_size) is reported
on stderr and counted as failed; the import then exits 65 after doing the rest.

Importing is idempotent: running it again on the same tree adds nothing.
The store keeps each message's body hash (SHA-256, the key of its
single-instance body store), so before a folder is imported its mailbox's
hashes are read once (``fetch``, which carries ``body_hash``); a message
whose body the mailbox already holds is skipped and counted as "skipped"
(as many times as the mailbox holds that body: two identical files in a
folder are two messages).  Within one run a unique name seen twice in a
folder (a file moved from new/ to cur/ while the tree was listed) is read
once.  Skipped messages keep the flags they have in the store.

On a terminal (standard error a TTY) a tree of :data:`PROGRESS_MIN` messages
or more shows a progress bar; the counts (imported, skipped as already
there, failed) are printed at the end in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from replicad.admin.client import AdminClient
from replicad.cli.common import (
    connect,
    node_config,
    output_format,
    path_argument,
    print_rows,
    user_name,
    user_of,
    write_line,
)
from replicad.errors import AlreadyExistsError, ExitCode, NoSuchUserError
from replicad.maildir import MaildirMessage, walk

MAX_BATCH_BYTES = 4 << 20
MAX_BATCH_MESSAGES = 500
#: Trees with at least this many messages show a progress bar on a terminal.
PROGRESS_MIN = 200
IMPORT_FIELDS = ["mailbox", "imported", "skipped", "failed"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    imp = subparsers.add_parser(
        "import",
        parents=[common],
        help="bulk load a Maildir++ tree",
        description="Import a Maildir++ tree: cur/ and new/ into INBOX, .A.B into A/B; "
        "flags from the ':2,' suffix, internal date from the file mtime. "
        "Idempotent: a message whose body the mailbox already holds (imported before, "
        "or delivered) is skipped and counted as skipped, so importing the same tree "
        "twice adds nothing the second time. Prints per mailbox how many messages were "
        "imported, skipped as already there, and failed (exit 65 if any failed); "
        "a progress bar on a terminal for large trees.",
    )
    imp.add_argument("-u", "--user", required=True, metavar="USER", type=user_name)
    imp.add_argument("maildir", metavar="MAILDIR", type=path_argument)
    imp.set_defaults(handler=cmd_import)


class _Sender:
    """Sends batches on two admin connections, so the node commits one batch
    while the next is read, sent and compressed (two batches in flight).

    Each batch carries (stream, seq): the node prepares both at once but
    commits them in order, so UIDs follow the Maildir's order.
    """

    IN_FLIGHT = 2

    def __init__(self, path: Path) -> None:
        self._clients = [AdminClient(path).connect() for _ in range(self.IN_FLIGHT)]
        self._pool = ThreadPoolExecutor(max_workers=self.IN_FLIGHT)
        self._free = list(self._clients)
        self._pending: list[tuple[Future[list[Any]], AdminClient]] = []
        self._stream = uuid.uuid4().hex  # the node commits our batches in `seq` order
        self._seq = 0

    def submit(self, user: str, mailbox: str, items: list[dict[str, Any]]) -> list[int]:
        """Queue one batch; returns counts of batches that completed meanwhile."""
        done = []
        if not self._free:
            done.append(self._wait_oldest())
        client = self._free.pop()
        future = self._pool.submit(
            client.call,
            "append_many",
            user=user,
            mailbox=mailbox,
            items=items,
            stream=self._stream,
            seq=self._seq,
        )
        self._seq += 1
        self._pending.append((future, client))
        return done

    def _wait_oldest(self) -> int:
        future, client = self._pending.pop(0)
        self._free.append(client)
        return len(future.result())  # re-raises the node's error, if any

    def drain(self) -> list[int]:
        return [self._wait_oldest() for _ in range(len(self._pending))]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for client in self._clients:
            client.close()


class _Batcher:
    """Accumulates append items for one mailbox and flushes them within the bounds."""

    def __init__(self, sender: _Sender, user: str, mailbox: str) -> None:
        self._sender = sender
        self._user = user
        self._mailbox = mailbox
        self._items: list[dict[str, Any]] = []
        self._bytes = 0
        self.imported = 0

    def add(self, body: bytes, message: MaildirMessage) -> None:
        if self._items and (
            self._bytes + len(body) > MAX_BATCH_BYTES or len(self._items) >= MAX_BATCH_MESSAGES
        ):
            self.flush()
        self._items.append(
            {"body": body, "flags": list(message.flags), "internaldate": message.internaldate}
        )
        self._bytes += len(body)

    def flush(self) -> None:
        if self._items:
            self.imported += sum(self._sender.submit(self._user, self._mailbox, self._items))
            self._items = []
            self._bytes = 0

    def finish(self) -> None:
        self.flush()
        self.imported += sum(self._sender.drain())


class _Progress(Protocol):
    def advance(self, count: int = 1) -> None: ...


class _NoProgress:
    def advance(self, count: int = 1) -> None:
        pass


class _Bar:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, count: int = 1) -> None:
        self._progress.advance(self._task, count)


@contextlib.contextmanager
def progress_bar(total: int, *, tty: bool | None = None) -> Iterator[_Progress]:
    """A rich progress bar on standard error when it is a terminal and the tree
    is large (:data:`PROGRESS_MIN`); otherwise nothing is shown."""
    if tty is None:
        tty = sys.stderr.isatty()
    if not tty or total < PROGRESS_MIN:
        yield _NoProgress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "import",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        yield _Bar(progress, progress.add_task("import", total=total))


def present_bodies(client: AdminClient, user: str, mailbox: str) -> Counter[bytes]:
    """How many messages of ``mailbox`` hold each body (by SHA-256)."""
    infos = client.call("fetch", user=user, mailbox=mailbox, uids="1:*")
    return Counter(bytes(info["body_hash"]) for info in infos)


def cmd_import(args: argparse.Namespace) -> int:
    limit = node_config(args).admin.max_message_size
    user = user_of(args)
    tree = list(walk(args.maildir))  # file names and stat data only; checks the tree first
    rows: list[dict[str, Any]] = []
    with (
        connect(args) as client,
        contextlib.closing(_Sender(client.path)) as sender,
        progress_bar(sum(len(messages) for _, messages in tree)) as bar,
    ):
        try:
            existing = {s["name"] for s in client.call("mailbox_list", user=user)}
        except NoSuchUserError:
            existing = set()
        for folder, messages in tree:
            present: Counter[bytes] = Counter()
            if folder.mailbox in existing:
                present = present_bodies(client, user, folder.mailbox)
            else:
                # Created meanwhile (e.g. INBOX by a concurrent delivery) is fine.
                with contextlib.suppress(AlreadyExistsError):
                    client.call("mailbox_create", user=user, name=folder.mailbox)
            batcher = _Batcher(sender, user, folder.mailbox)
            seen: set[str] = set()
            skipped = failed = 0
            for message in messages:
                bar.advance()
                if message.unique_name in seen:
                    skipped += 1  # the same file listed twice (moved new/ -> cur/)
                    continue
                seen.add(message.unique_name)
                body = _read(message, limit)
                if body is None:
                    failed += 1
                    continue
                digest = hashlib.sha256(body).digest()
                if present[digest] > 0:
                    present[digest] -= 1
                    skipped += 1
                    continue
                batcher.add(body, message)
            batcher.finish()
            rows.append(
                {
                    "mailbox": folder.mailbox,
                    "imported": batcher.imported,
                    "skipped": skipped,
                    "failed": failed,
                }
            )
    print_rows(args, rows, IMPORT_FIELDS)
    totals = {f: sum(r[f] for r in rows) for f in IMPORT_FIELDS[1:]}
    if output_format(args) == "table":
        write_line(
            f"{totals['imported']} imported, {totals['skipped']} skipped (already there), "
            f"{totals['failed']} failed"
        )
    if totals["failed"]:
        print(
            f"replicad: import: {totals['failed']} message(s) failed (see above)", file=sys.stderr
        )
        return int(ExitCode.BAD_INPUT)
    return 0


def _read(message: MaildirMessage, limit: int) -> bytes | None:
    if message.size > limit:
        _warn(message.path, f"{message.size} bytes is above admin.max_message_size ({limit})")
        return None
    try:
        with message.path.open("rb") as fh:
            body = fh.read(limit + 1)
    except FileNotFoundError:
        # Maildir readers move files between new/ and cur/ at any time.
        _warn(message.path, "vanished while importing")
        return None
    except OSError as exc:
        _warn(message.path, exc.strerror or str(exc))
        return None
    if len(body) > limit:
        _warn(message.path, f"grew above admin.max_message_size ({limit})")
        return None
    if not body:
        _warn(message.path, "empty file")
        return None
    return body


def _warn(path: Path, reason: str) -> None:
    print(f"replicad: import: cannot import {path}: {reason}", file=sys.stderr)
