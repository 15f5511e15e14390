"""``replicad mailbox create|delete|rename|list|status|subscribe|unsubscribe|subscriptions
-u USER ...`` (docs/architecture.md §9)."""

from __future__ import annotations

import argparse
from typing import Any

from replicad.cli.common import (
    connect,
    mailbox_name,
    print_json_only,
    print_rows,
    split_words,
    user_name,
    user_of,
)
from replicad.errors import UsageError

STATUS_FIELDS = ("messages", "uidnext", "uidvalidity", "highestmodseq", "vsize", "guid")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    mailbox = subparsers.add_parser(
        "mailbox",
        parents=[common],
        help="create, delete, rename, list mailboxes; status; IMAP subscriptions",
        description="Mailbox management. Names use '/' as the hierarchy separator.",
    )
    actions = mailbox.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        parents=[common],
        help="create mailboxes (and their missing superiors: Work/2026 makes Work too)",
    )
    _user(create)
    create.add_argument("names", nargs="+", metavar="NAME", type=mailbox_name)
    create.set_defaults(handler=cmd_create)

    delete = actions.add_parser(
        "delete",
        parents=[common],
        help="delete mailboxes (the mailboxes below one stay, RFC 3501 §6.3.4)",
    )
    _user(delete)
    delete.add_argument("names", nargs="+", metavar="NAME", type=mailbox_name)
    delete.set_defaults(handler=cmd_delete)

    rename = actions.add_parser(
        "rename", parents=[common], help="rename a mailbox (and its children)"
    )
    _user(rename)
    rename.add_argument("old", metavar="OLD", type=mailbox_name)
    rename.add_argument("new", metavar="NEW", type=mailbox_name)
    rename.set_defaults(handler=cmd_rename)

    listing = actions.add_parser("list", parents=[common], help="list a user's mailboxes")
    _user(listing)
    listing.set_defaults(handler=cmd_list)

    status = actions.add_parser(
        "status",
        parents=[common],
        help="mailbox status",
        description=f"Print FIELDS (default all: {' '.join(STATUS_FIELDS)}) of mailbox NAME. "
        "FIELDS may come before or after NAME (quote several: 'messages uidnext'); "
        "when both words could be FIELDS, the first is.",
    )
    _user(status)
    status.add_argument("words", nargs="+", metavar="[FIELDS] NAME [FIELDS]")
    status.set_defaults(handler=cmd_status)

    for action, what in (("subscribe", "subscribe"), ("unsubscribe", "unsubscribe")):
        sub = actions.add_parser(
            action,
            parents=[common],
            help=f"{what} IMAP names for the user (any name, existing or not)",
        )
        _user(sub)
        sub.add_argument("names", nargs="+", metavar="NAME", type=mailbox_name)
        sub.set_defaults(handler=cmd_subscribe, subscribe=action == "subscribe")

    subscriptions = actions.add_parser(
        "subscriptions", parents=[common], help="list the names the user is subscribed to"
    )
    _user(subscriptions)
    subscriptions.set_defaults(handler=cmd_subscriptions)


def _user(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-u", "--user", required=True, metavar="USER", type=user_name)


def status_row(status: dict[str, Any]) -> dict[str, Any]:
    return {
        "mailbox": status["name"],
        "messages": status["messages"],
        "uidnext": status["uidnext"],
        "uidvalidity": status["uidvalidity"],
        "highestmodseq": status["highestmodseq"],
        "vsize": status["vsize"],
        "guid": status["guid"].hex(),
    }


def cmd_create(args: argparse.Namespace) -> int:
    created = []
    user = user_of(args)
    with connect(args) as client:
        for name in args.names:
            result = client.call("mailbox_create", user=user, name=name)
            created.append({"mailbox": result["name"], "guid": result["guid"].hex()})
    print_json_only(args, created)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    deleted = []
    user = user_of(args)
    with connect(args) as client:
        for name in args.names:
            result = client.call("mailbox_delete", user=user, name=name)
            deleted.append({"mailbox": result["name"], "guid": result["guid"].hex()})
    print_json_only(args, deleted)
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.call("mailbox_rename", user=user_of(args), old=args.old, new=args.new)
    print_json_only(args, {"old": result["old"], "new": result["new"]})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        statuses = client.call("mailbox_list", user=user_of(args))
    print_rows(args, [{"mailbox": s["name"]} for s in statuses], ["mailbox"])
    return 0


def _is_fields(word: str) -> bool:
    fields = split_words(word)
    return word == "all" or (bool(fields) and all(f in STATUS_FIELDS for f in fields))


def status_words(words: list[str]) -> tuple[list[str], str]:
    """(fields, mailbox name) of ``[FIELDS] NAME`` or ``NAME FIELDS``."""
    if len(words) > 2:
        raise UsageError(
            "mailbox status takes [FIELDS] NAME or NAME [FIELDS] (quote FIELDS: 'messages uidnext')"
        )
    if len(words) == 1:
        return list(STATUS_FIELDS), words[0]
    first, second = words
    if not _is_fields(first) and _is_fields(second):
        first, second = second, first  # NAME FIELDS, as fetch puts the mailbox after its fields
    if first == "all":
        return list(STATUS_FIELDS), second
    fields = split_words(first)
    unknown = [f for f in fields if f not in STATUS_FIELDS]
    if unknown or not fields:
        raise UsageError(
            f"mailbox status: unknown field {(unknown or [''])[0]!r} "
            f"(fields: {' '.join(STATUS_FIELDS)})"
        )
    return fields, second


def cmd_status(args: argparse.Namespace) -> int:
    fields, name = status_words(args.words)
    mailbox_name(name)
    with connect(args) as client:
        status = client.call("mailbox_status", user=user_of(args), name=name)
    print_rows(args, [status_row(status)], ["mailbox", *fields])
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    changed = []
    user = user_of(args)
    with connect(args) as client:
        for name in args.names:
            result = client.call(
                "mailbox_subscribe", user=user, name=name, subscribe=args.subscribe
            )
            changed.append({"mailbox": result["name"], "subscribed": result["subscribed"]})
    print_json_only(args, changed)
    return 0


def cmd_subscriptions(args: argparse.Namespace) -> int:
    with connect(args) as client:
        names = client.call("mailbox_subscriptions", user=user_of(args))
    print_rows(args, [{"mailbox": n} for n in names], ["mailbox"])
    return 0
