"""``replicad import -u USER MAILDIR``: bulk load a Maildir++ tree.

Messages are read and sent in batches bounded both in count and in bytes, so
the client's memory stays bounded whatever the size of the tree; each batch
is one ``append_many`` request, i.e. one store transaction (all of it is
durable, or none).  Missing mailboxes are created.  A message that cannot be
imported (vanished meanwhile, larger than admin.max_message_size) is reported
on stderr and skipped; the import then exits 65 after doing the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from replicad.admin.client import AdminClient
from replicad.cli.common import connect, node_config, print_rows
from replicad.errors import AlreadyExistsError, ExitCode, NoSuchUserError
from replicad.maildir import MaildirMessage, walk

MAX_BATCH_BYTES = 8 << 20
MAX_BATCH_MESSAGES = 500


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    imp = subparsers.add_parser(
        "import",
        parents=[common],
        help="bulk load a Maildir++ tree",
        description="Import a Maildir++ tree: cur/ and new/ into INBOX, .A.B into A/B; "
        "flags from the ':2,' suffix, internal date from the file mtime.",
    )
    imp.add_argument("-u", "--user", required=True, metavar="USER")
    imp.add_argument("maildir", metavar="MAILDIR", type=Path)
    imp.set_defaults(handler=cmd_import)


class _Batcher:
    """Accumulates append items for one mailbox and flushes them within the bounds."""

    def __init__(self, client: AdminClient, user: str, mailbox: str) -> None:
        self._client = client
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
        if not self._items:
            return
        appended = self._client.call(
            "append_many", user=self._user, mailbox=self._mailbox, items=self._items
        )
        self.imported += len(appended)
        self._items = []
        self._bytes = 0


def cmd_import(args: argparse.Namespace) -> int:
    limit = node_config(args).admin.max_message_size
    rows: list[dict[str, Any]] = []
    skipped = 0
    with connect(args) as client:
        try:
            existing = {s["name"] for s in client.call("mailbox_list", user=args.user)}
        except NoSuchUserError:
            existing = set()
        for folder, messages in walk(args.maildir):
            if folder.mailbox not in existing:
                # Created meanwhile (e.g. INBOX by a concurrent delivery) is fine.
                with contextlib.suppress(AlreadyExistsError):
                    client.call("mailbox_create", user=args.user, name=folder.mailbox)
            batcher = _Batcher(client, args.user, folder.mailbox)
            for message in messages:
                body = _read(message, limit)
                if body is None:
                    skipped += 1
                    continue
                batcher.add(body, message)
            batcher.flush()
            rows.append({"mailbox": folder.mailbox, "messages": batcher.imported})
    print_rows(args, rows, ["mailbox", "messages"])
    if skipped:
        print(f"replicad: import: {skipped} message(s) skipped (see above)", file=sys.stderr)
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
    print(f"replicad: import: skipping {path}: {reason}", file=sys.stderr)
