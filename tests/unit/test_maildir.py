"""The Maildir++ reader used by ``replicad import``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replicad.errors import BadInputError
from replicad.maildir import (
    decode_mutf7,
    flags_from_name,
    folder_mailbox_name,
    list_folders,
    read_keywords,
    walk,
)


def make_maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    return path


def put(folder: Path, sub: str, name: str, body: bytes = b"x", mtime: int = 1_600_000_000) -> Path:
    path = folder / sub / name
    path.write_bytes(body)
    os.utime(path, (mtime, mtime))
    return path


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("123.M1P1.host:2,S", ("\\Seen",)),
        ("123.M1P1.host,S=42:2,FRS", ("\\Answered", "\\Flagged", "\\Seen")),
        ("123.M1P1.host:2,DT", ("\\Deleted", "\\Draft")),
        ("123.M1P1.host:2,P", ()),  # "passed" has no IMAP flag
        ("123.M1P1.host:2,", ()),
        ("123.M1P1.host", ()),
        ("123.M1P1.host:2,Sab", ("\\Seen", "$Junk", "work")),
    ],
)
def test_flags_from_name(name: str, flags: tuple[str, ...]) -> None:
    assert flags_from_name(name, {"a": "work", "b": "$Junk"}) == flags


def test_folder_names() -> None:
    assert folder_mailbox_name(".Sent") == "Sent"
    assert folder_mailbox_name(".A.B") == "A/B"
    assert folder_mailbox_name(".Entw&APw-rfe") == "Entwürfe"
    assert decode_mutf7("R&-D") == "R&D"
    assert decode_mutf7("&ZeVnLIqe-") == "日本語"
    for bad in (".A..B", ".", ".A.", ".&ZeVn"):
        with pytest.raises(BadInputError):
            folder_mailbox_name(bad)


def test_walk_orders_and_reads_flags_and_dates(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    make_maildir(root / ".Archive.2024")
    make_maildir(root / ".Sent")
    (root / ".notafolder").mkdir()  # no cur/new: ignored
    (root / "dovecot-keywords").write_text("0 work\n1 $Junk\n")
    put(root, "cur", "1600000002.M2P1.h:2,Sa", mtime=1_600_000_222)
    put(root, "new", "1600000001.M1P1.h", mtime=1_600_000_111)
    put(root, "cur", "999.M0P1.h:2,F")  # fewer digits: earlier, not lexically later
    put(root, "cur", ".hidden")
    put(root, "tmp", "1600000003.M3P1.h")  # delivery in progress: never read
    put(root / ".Sent", "cur", "1.M1P1.h:2,RS")

    got = {folder.mailbox: msgs for folder, msgs in walk(root)}
    assert list(got) == ["INBOX", "Archive/2024", "Sent"]
    inbox = got["INBOX"]
    assert [m.path.name for m in inbox] == [
        "999.M0P1.h:2,F",
        "1600000001.M1P1.h",
        "1600000002.M2P1.h:2,Sa",
    ]
    assert [m.flags for m in inbox] == [("\\Flagged",), (), ("\\Seen", "work")]
    assert [m.internaldate for m in inbox][1:] == [1_600_000_111, 1_600_000_222]
    assert got["Archive/2024"] == []
    assert got["Sent"][0].flags == ("\\Answered", "\\Seen")


def test_dovecot_uidlist_order_wins(tmp_path: Path) -> None:
    root = make_maildir(tmp_path / "Maildir")
    put(root, "cur", "100.a.h:2,S")
    put(root, "cur", "200.b.h:2,")
    (root / "dovecot-uidlist").write_text("3 V1 N3\n1 :200.b.h\n2 :100.a.h:2,S\n")
    [(_, msgs)] = list(walk(root))
    assert [m.path.name for m in msgs] == ["200.b.h:2,", "100.a.h:2,S"]


def test_not_a_maildir(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not a Maildir"):
        list_folders(tmp_path)
    with pytest.raises(BadInputError, match="not a directory"):
        list_folders(tmp_path / "missing")


def test_keywords_file_absent(tmp_path: Path) -> None:
    assert read_keywords(tmp_path) == {}
