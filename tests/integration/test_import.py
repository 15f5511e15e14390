"""``replicad import`` of a generated Maildir++ corpus (gen_corpus.py, seed 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NodeProcess

# The project's copy of the benchmark corpus generator (DESIGN §10).
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
    counts = {row["mailbox"]: row["messages"] for row in json.loads(result.stdout)}
    assert counts == {name: len(files) for name, files in expected.items()}

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


def test_import_into_existing_user_appends(node: NodeProcess, corpus: Path) -> None:
    assert node.cli("mailbox", "create", "-u", "dave", "Sent").returncode == 0
    first = node.cli("-f", "json", "import", "-u", "dave", corpus)
    assert first.returncode == 0, first.stderr.decode()
    counts = {row["mailbox"]: row["messages"] for row in json.loads(first.stdout)}
    assert counts["Sent"] == len(expected_folders(corpus)["Sent"]) > 0
    # Importing again appends (new UIDs), it never replaces what is there.
    again = node.cli("-f", "json", "import", "-u", "dave", corpus)
    assert again.returncode == 0, again.stderr.decode()
    status = node.cli("-f", "json", "mailbox", "status", "-u", "dave", "messages uidnext", "Sent")
    assert json.loads(status.stdout)[0]["messages"] == 2 * counts["Sent"]
    assert node.cli("import", "-u", "dave", corpus / "nonexistent").returncode == 65
