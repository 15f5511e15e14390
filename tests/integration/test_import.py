"""``replicad import`` of a generated Maildir++ corpus (gen_corpus.py, seed 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NodeProcess

# The project's copy of the benchmark corpus generator (docs/architecture.md §10).
GEN_CORPUS = Path(__file__).resolve().parents[2] / "tools" / "gen_corpus.py"

LETTERS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered", "D": "\\Draft", "T": "\\Deleted"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run(
        [
            sys.executable,
            str(GEN_CORPUS),
            str(out),
            "--users",
            "1",
            "--mailboxes",
            "5",
            "--messages",
            "500",
            "--seed",
            "7",
        ],
        check=True,
        capture_output=True,
    )
    return out / "user00000" / "Maildir"


def expected_folders(root: Path) -> dict[str, list[Path]]:
    """Independently of replicad.maildir: mailbox → files in name order."""
    folders = {"INBOX": root}
    for entry in root.iterdir():
        if entry.name.startswith(".") and entry.is_dir():
            folders[entry.name[1:].replace(".", "/")] = entry
    return {
        name: sorted(
            (p for sub in ("new", "cur") for p in (path / sub).iterdir()), key=lambda p: p.name
        )
        for name, path in folders.items()
    }


def flags_of(path: Path) -> list[str]:
    letters = path.name.split(":2,", 1)[1] if ":2," in path.name else ""
    return sorted((LETTERS[c] for c in letters if c in LETTERS), key=str)


def test_import_maildir_corpus(node: NodeProcess, corpus: Path) -> None:
    expected = expected_folders(corpus)
    assert sum(len(v) for v in expected.values()) == 500
    dated = expected["INBOX"][0]
    os.utime(dated, (1_500_000_000, 1_500_000_000))  # internaldate comes from the mtime

    result = node.cli("-f", "json", "import", "-u", "carol", corpus)
    assert result.returncode == 0, result.stderr.decode()
    rows = json.loads(result.stdout)
    counts = {row["mailbox"]: row["imported"] for row in rows}
    assert counts == {name: len(files) for name, files in expected.items()}
    assert all(row["skipped"] == row["failed"] == 0 for row in rows)

    with node.client() as client:
        for mailbox, files in expected.items():
            status = client.call("mailbox_status", user="carol", name=mailbox)
            assert status["messages"] == len(files)
            infos = client.call("fetch", user="carol", mailbox=mailbox, uids="1:*")
            assert [i["uid"] for i in infos] == list(range(1, len(files) + 1))
            for info, path in zip(infos, files, strict=True):
                assert sorted(info["flags"]) == flags_of(path), path.name
                assert info["size"] == path.stat().st_size
            # Every body is byte-identical to its file.
            for info, path in zip(infos, files, strict=True):
                body = client.call("fetch_body", user="carol", mailbox=mailbox, uid=info["uid"])
                assert body == path.read_bytes(), path.name

    # A few through the command line as well, and the internal date.
    text = node.cli("fetch", "-u", "carol", "text", "mailbox", "INBOX", "uid", "1")
    assert text.stdout == dated.read_bytes()
    row = json.loads(
        node.cli(
            "-f", "json", "fetch", "-u", "carol", "date", "mailbox", "INBOX", "uid", "1"
        ).stdout
    )
    assert row == [{"date": "2017-07-14T02:40:00Z"}]


def import_rows(node: NodeProcess, user: str, maildir: Path) -> dict[str, dict[str, int]]:
    result = node.cli("-f", "json", "import", "-u", user, maildir)
    assert result.returncode == 0, result.stderr.decode()
    return {row.pop("mailbox"): row for row in json.loads(result.stdout)}


def messages(node: NodeProcess, user: str, mailbox: str) -> int:
    status = node.cli("-f", "json", "mailbox", "status", "-u", user, "messages", mailbox)
    assert status.returncode == 0, status.stderr.decode()
    count: int = json.loads(status.stdout)[0]["messages"]
    return count


def test_import_twice_adds_nothing_the_second_time(node: NodeProcess, corpus: Path) -> None:
    assert node.cli("mailbox", "create", "-u", "dave", "Sent").returncode == 0
    expected = {name: len(files) for name, files in expected_folders(corpus).items()}
    first = import_rows(node, "dave", corpus)
    assert {name: row["imported"] for name, row in first.items()} == expected
    assert expected["Sent"] > 0

    again = import_rows(node, "dave", corpus)
    # Every message is already there: none imported, all counted as skipped.
    assert again == {
        name: {"imported": 0, "skipped": n, "failed": 0} for name, n in expected.items()
    }
    for name, count in expected.items():
        assert messages(node, "dave", name) == count
    # The table says so in words, too.
    table = node.cli("import", "-u", "dave", corpus)
    assert table.returncode == 0, table.stderr.decode()
    assert f"0 imported, {sum(expected.values())} skipped (already there), 0 failed" in (
        table.stdout.decode()
    )
    assert node.cli("import", "-u", "dave", corpus / "nonexistent").returncode == 65


def test_import_again_adds_only_what_is_new(node: NodeProcess, tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    same = b"Subject: same\r\n\r\nidentical bytes\r\n"
    (root / "cur" / "1.M1.host:2,S").write_bytes(same)
    (root / "cur" / "2.M2.host:2,").write_bytes(same)  # another message, the same body
    (root / "new" / "3.M3.host").write_bytes(b"Subject: three\r\n\r\n3\r\n")
    first = import_rows(node, "erin", root)
    assert first == {"INBOX": {"imported": 3, "skipped": 0, "failed": 0}}

    # A new delivery, and a message whose flags changed since (renamed file).
    (root / "new" / "4.M4.host").write_bytes(b"Subject: four\r\n\r\n4\r\n")
    (root / "new" / "3.M3.host").rename(root / "cur" / "3.M3.host:2,RS")
    second = import_rows(node, "erin", root)
    assert second == {"INBOX": {"imported": 1, "skipped": 3, "failed": 0}}
    assert messages(node, "erin", "INBOX") == 4

    # A third copy of the same body is a new message: one more.
    (root / "cur" / "5.M5.host:2,").write_bytes(same)
    third = import_rows(node, "erin", root)
    assert third == {"INBOX": {"imported": 1, "skipped": 4, "failed": 0}}
    assert messages(node, "erin", "INBOX") == 5
