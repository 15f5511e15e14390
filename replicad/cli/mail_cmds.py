"""Message commands: ``save``, ``fetch``, ``flags``, ``expunge``, ``copy`` (architecture.md §9)."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from typing import Any

from replicad.cli.common import (
    connect,
    mailbox_name,
    node_config,
    output_format,
    print_json_only,
    print_rows,
    split_words,
    user_name,
    user_of,
    write_line,
)
from replicad.cli.output import render_document
from replicad.cli.query import parse_query
from replicad.errors import BadInputError, NoSuchMessageError, UsageError

FETCH_FIELDS = ("uid", "guid", "flags", "modseq", "size", "date")
TEXT_FIELD = "text"
QUERY_HELP = "search query: mailbox NAME [uid SET | all]"


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    save = subparsers.add_parser(
        "save",
        parents=[common],
        help="save a message read from stdin; prints its UID",
        description="Save the message on stdin into MAILBOX (default INBOX) and print its UID. "
        "INBOX is created on first delivery.",
    )
    _user(save)
    save.add_argument("-m", "--mailbox", default="INBOX", metavar="MAILBOX", type=mailbox_name)
    save.add_argument(
        "--flags",
        action="append",
        default=[],
        metavar="FLAGS",
        help="space-separated flags, e.g. '\\Seen $Label1' (repeatable)",
    )
    save.add_argument(
        "--date",
        type=int,
        metavar="EPOCH",
        help="internal date in seconds since the epoch (default: now)",
    )
    save.set_defaults(handler=cmd_save)

    fetch = subparsers.add_parser(
        "fetch",
        parents=[common],
        help="print message fields, or the raw message with 'text'",
        description="Print FIELDS (any of: uid guid flags modseq size date) of the messages "
        "the query selects, or with FIELDS 'text' the raw message of one UID: its octets "
        'as stored, or with -f json one document {"uid": UID, "text": BASE64} '
        "(-f tab does not apply to text: exit 64).",
    )
    _user(fetch)
    fetch.add_argument("fields", metavar="FIELDS", help="e.g. 'uid flags' or 'text'")
    fetch.add_argument("query", nargs="+", metavar="QUERY", help=QUERY_HELP)
    fetch.set_defaults(handler=cmd_fetch)

    flags = subparsers.add_parser(
        "flags",
        parents=[common],
        help="add, remove or replace flags",
        description="Change the flags of the selected messages.",
    )
    flags.add_argument("mode", choices=("add", "remove", "replace"))
    _user(flags)
    flags.add_argument("flags", metavar="FLAGS", help="space-separated, e.g. '\\Seen \\Flagged'")
    flags.add_argument("query", nargs="+", metavar="QUERY", help=QUERY_HELP)
    flags.set_defaults(handler=cmd_flags)

    expunge = subparsers.add_parser(
        "expunge",
        parents=[common],
        help="expunge messages",
        description="Expunge the selected messages (their UIDs are never reused, I3).",
    )
    _user(expunge)
    expunge.add_argument("query", nargs="+", metavar="QUERY", help=QUERY_HELP)
    expunge.set_defaults(handler=cmd_expunge)

    copy = subparsers.add_parser(
        "copy",
        parents=[common],
        help="copy messages to another mailbox",
        description="Copy the selected messages to DEST; prints source and new UIDs.",
    )
    _user(copy)
    copy.add_argument("dest", metavar="DEST", type=mailbox_name)
    copy.add_argument("query", nargs="+", metavar="QUERY", help=QUERY_HELP)
    copy.set_defaults(handler=cmd_copy)


def _user(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-u", "--user", required=True, metavar="USER", type=user_name)


def format_date(epoch: int) -> str:
    """Internal dates print as RFC 3339 UTC in every format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def message_row(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "uid": info["uid"],
        "guid": info["guid"].hex(),
        "flags": list(info["flags"]),
        "modseq": info["modseq"],
        "size": info["size"],
        "date": format_date(info["internaldate"]),
    }


def cmd_save(args: argparse.Namespace) -> int:
    config = node_config(args)
    if sys.stdin.isatty():
        raise UsageError("save reads the message from stdin: replicad save -u USER < message")
    limit = config.admin.max_message_size
    # Read one byte past the limit: enough to know it is too large, no more.
    body = sys.stdin.buffer.read(limit + 1)
    if len(body) > limit:
        raise BadInputError(
            f"message is larger than {limit} bytes (admin.max_message_size in {config.path})"
        )
    if not body:
        raise BadInputError("empty message on stdin")
    flags = [f for text in args.flags for f in split_words(text)]
    with connect(args) as client:
        result = client.call(
            "save",
            user=user_of(args),
            mailbox=args.mailbox,
            body=body,
            flags=flags,
            internaldate=args.date,
        )
    if output_format(args) == "json":
        write_line(render_document({"uid": result["uid"], "guid": result["guid"].hex()}))
    else:
        write_line(str(result["uid"]))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    fields = split_words(args.fields)
    if not fields:
        raise UsageError("fetch: no fields given")
    query = parse_query(args.query, require_selection=False)
    mailbox_name(query.mailbox)
    if TEXT_FIELD in fields:
        if fields != [TEXT_FIELD]:
            raise UsageError("fetch: 'text' cannot be combined with other fields")
        return _fetch_text(args, query.mailbox, str(query.uids))
    unknown = [f for f in fields if f not in FETCH_FIELDS]
    if unknown:
        raise UsageError(
            f"fetch: unknown field {unknown[0]!r} (fields: {' '.join(FETCH_FIELDS)} or text)"
        )
    with connect(args) as client:
        infos = client.call(
            "fetch", user=user_of(args), mailbox=query.mailbox, uids=str(query.uids)
        )
    print_rows(args, [message_row(i) for i in infos], fields)
    return 0


def _fetch_text(args: argparse.Namespace, mailbox: str, uids: str) -> int:
    fmt = output_format(args)
    if fmt == "tab":
        raise UsageError(
            "fetch text prints the raw message: -f tab does not apply (-f json: base64)"
        )
    user = user_of(args)
    with connect(args) as client:
        infos = client.call("fetch", user=user, mailbox=mailbox, uids=uids)
        if not infos:
            raise NoSuchMessageError(f"no message with UID {uids} in mailbox {mailbox!r}")
        if len(infos) > 1:
            raise UsageError("fetch text prints one message: select a single UID")
        body: bytes = client.call("fetch_body", user=user, mailbox=mailbox, uid=infos[0]["uid"])
    if fmt == "json":
        text = base64.b64encode(body).decode("ascii")
        write_line(render_document({"uid": infos[0]["uid"], "text": text}))
        return 0
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


def cmd_flags(args: argparse.Namespace) -> int:
    flags = split_words(args.flags)
    if not flags and args.mode != "replace":
        raise UsageError(f"flags {args.mode}: no flags given")
    query = parse_query(args.query, require_selection=True)
    mailbox_name(query.mailbox)
    with connect(args) as client:
        result = client.call(
            "store_flags",
            user=user_of(args),
            mailbox=query.mailbox,
            uids=str(query.uids),
            mode=args.mode,
            flags=flags,
        )
    print_json_only(args, {"uids": result["uids"], "modseq": result["modseq"]})
    return 0


def cmd_expunge(args: argparse.Namespace) -> int:
    query = parse_query(args.query, require_selection=True)
    mailbox_name(query.mailbox)
    with connect(args) as client:
        result = client.call(
            "expunge", user=user_of(args), mailbox=query.mailbox, uids=str(query.uids)
        )
    print_json_only(args, {"uids": result["uids"], "modseq": result["modseq"]})
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    query = parse_query(args.query, require_selection=True)
    mailbox_name(query.mailbox)
    with connect(args) as client:
        result = client.call(
            "copy",
            user=user_of(args),
            mailbox=query.mailbox,
            uids=str(query.uids),
            dest=args.dest,
        )
    rows = [
        {"uid": src, "dest_uid": dst}
        for src, dst in zip(result["source_uids"], result["dest_uids"], strict=True)
    ]
    print_rows(args, rows, ["uid", "dest_uid"])
    return 0
