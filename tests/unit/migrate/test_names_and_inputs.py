"""Folder names, flags, the users and password files, the source URL (pure)."""

from __future__ import annotations

import pytest

from replicad.errors import BadInputError
from replicad.migrate.names import SourceFolder, map_flags, map_folders, plain_target_name
from replicad.migrate.source import fetch_batches
from replicad.migrate.userlist import (
    SourceAddress,
    UserPair,
    parse_passwords,
    parse_source,
    parse_users,
)


def test_modified_utf7_separator_and_prefix_are_mapped() -> None:
    assert plain_target_name(SourceFolder("Entw&APw-rfe", ".")) == "Entwürfe"
    assert plain_target_name(SourceFolder("Work.Projects.2024", ".")) == "Work/Projects/2024"
    assert plain_target_name(SourceFolder("INBOX.Sent", "."), "INBOX.") == "Sent"
    assert plain_target_name(SourceFolder("inbox", "/")) == "INBOX"
    assert plain_target_name(SourceFolder("a/b.c", ".")) == "a_b/c"  # '/' is our separator


def test_special_use_roles_take_our_names_unless_taken_and_noselect_is_skipped() -> None:
    folders = [
        SourceFolder("INBOX", "."),
        SourceFolder("Sent Items", ".", ("\\HasNoChildren", "\\Sent")),
        SourceFolder("Deleted", ".", ("\\Trash",)),
        SourceFolder("Trash", "."),  # already named Trash: both keep their names
        SourceFolder("Archive.2023", ".", ("\\Archive",)),  # not top level: kept
        SourceFolder("Shared", ".", ("\\Noselect",)),
        SourceFolder("Shared.Team", "."),
    ]
    mapped = map_folders(folders)
    assert mapped == {
        "Deleted": "Deleted",
        "INBOX": "INBOX",
        "Sent Items": "Sent",
        "Trash": "Trash",
        "Archive.2023": "Archive/2023",
        "Shared.Team": "Shared/Team",
    }
    assert list(mapped.values()).index("Archive/2023") > list(mapped.values()).index("Trash")


def test_two_folders_mapping_to_one_name_are_refused() -> None:
    with pytest.raises(BadInputError, match="both map"):
        map_folders([SourceFolder("a.b", "."), SourceFolder("a/b", "/")])


def test_flags_keep_system_and_keywords_drop_recent_and_illegal() -> None:
    mapped = map_flags(["\\seen", "\\Recent", "$Work", "bad(kw", "Urgent"])
    assert mapped.flags == ("\\Seen", "$Work", "Urgent")
    assert mapped.dropped == 1


def test_users_file() -> None:
    text = "# migration wave 1\nalice\nBob@Old.example  bob@example.org # renamed\n\n"
    assert parse_users(text) == [
        UserPair("alice", "alice"),
        UserPair("Bob@Old.example", "bob@example.org"),
    ]
    with pytest.raises(BadInputError, match="line 2"):
        parse_users("a x\nb x\n")
    with pytest.raises(BadInputError, match="line 1"):
        parse_users("a b c\n")
    with pytest.raises(BadInputError):
        parse_users("# nobody\n")


def test_password_file() -> None:
    assert parse_passwords("s3cret pass\n", ["alice"], master=True) == {"": "s3cret pass"}
    assert parse_passwords("only\n", ["alice"], master=False) == {"alice": "only"}
    assert parse_passwords("alice a b\nbob c\n", ["alice", "bob"], master=False) == {
        "alice": "a b",
        "bob": "c",
    }
    with pytest.raises(BadInputError, match="bob"):
        parse_passwords("alice a\n", ["alice", "bob"], master=False)


def test_source_url() -> None:
    assert parse_source("imaps://mail.example.org") == SourceAddress("mail.example.org", 993, True)
    assert parse_source("imap://10.0.0.5:1143") == SourceAddress("10.0.0.5", 1143, False)
    assert parse_source("imap://[::1]:143") == SourceAddress("::1", 143, False)
    for bad in ("pop3://x", "imap://", "imap://h:99999", "imap://u@h", "h:143"):
        with pytest.raises(BadInputError):
            parse_source(bad)


def test_fetch_batches_bound_bytes_and_never_split_a_message() -> None:
    sizes = {1: 5 << 20, 2: 5 << 20, 3: 50 << 20, 4: 10}
    assert fetch_batches(sizes, [1, 2, 3, 4]) == [[1], [2], [3], [4]]
    assert fetch_batches({i: 10 for i in range(1, 1202)}, list(range(1, 1202)))[0] == list(
        range(1, 501)
    )
