"""Hostile command-line arguments: every subcommand, every argument slot.

Bytes that are not UTF-8 (as the shell passes ``$'Caf\\xe9'``: lone
surrogates after ``os.fsdecode``), control characters, 100 KB strings and
empty strings, plus a few generated ones, in each argument of each
subcommand, against one real node.  Every run must end with an exit code of
the README's list and a message, never a traceback; every non-empty hostile
value must be refused as bad input (65) or bad usage (64) before anything
is done.

The table runs in one Python process (tests/integration/cli_driver.py runs
``main(argv)`` as the console script does), so it takes seconds; a few of
the issue's own examples also run as real ``replicad`` processes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from tests.conftest import NodeProcess

DRIVER = Path(__file__).with_name("cli_driver.py")
MESSAGE = b"From: a@example.org\r\nSubject: hostile\r\n\r\nbody\r\n"
X = "\0slot"  # where the hostile value goes in a template
DOCUMENTED = {0, 64, 65, 67, 68, 69}  # README, "Exit codes" (1 is never expected)


def hostile_values() -> list[str]:
    fixed = [
        os.fsdecode(b"Caf\xe9"),  # Latin-1, not UTF-8
        os.fsdecode(b"\xed\xa0\x80"),  # an encoded surrogate
        "line\nbreak\t",
        "\x1b[31mred\x7f",
        "nel\x85",  # a C1 control character
        "a" * 100_000,
        "é" * 50_000,  # 100 KB of valid UTF-8
    ]
    rng = random.Random(20240601)
    generated = []
    for _ in range(1):
        raw = bytearray(rng.randbytes(rng.randint(1, 40)))
        raw.insert(rng.randint(0, len(raw)), 0xFF)  # never valid UTF-8
        generated.append(os.fsdecode(bytes(raw.replace(b"\0", b"\1"))))
        printable = "".join(rng.choice("abcXYZ/@.-_é") for _ in range(rng.randint(0, 20)))
        generated.append(printable + chr(rng.randint(1, 31)))
    return [*fixed, *generated]


def templates(config: Path, scratch: Path, maildir: Path) -> list[tuple[list[str], bytes]]:
    """Command lines with one slot X; stdin for each."""
    c = ["-c", str(config)]
    cdir, idir = str(scratch / "nocluster"), str(scratch / "init")
    md = str(maildir)
    q = ["mailbox", "INBOX", "uid", "99"]  # selects nothing: a valid value changes nothing
    lines: list[list[str]] = [
        [X],
        ["-c", X, "mailbox", "list", "-u", "alice"],
        [*c, "-f", X, "mailbox", "list", "-u", "alice"],
        [*c, "mailbox", "list", "-u", "alice", "-f", X],
        # messages
        [*c, "save", "-u", X],
        [*c, "save", "-u", "alice", "-m", X],
        [*c, "save", "-u", "alice", "--flags", X],
        [*c, "save", "-u", "alice", "--date", X],
        [*c, "fetch", "-u", X, "uid", "mailbox", "INBOX"],
        [*c, "fetch", "-u", "alice", X, "mailbox", "INBOX"],
        [*c, "fetch", "-u", "alice", "uid", "mailbox", X],
        [*c, "fetch", "-u", "alice", "uid", "mailbox", "INBOX", "uid", X],
        [*c, "fetch", "-u", "alice", "uid", X],
        [*c, "fetch", "-u", "alice", "text", "mailbox", X, "uid", "1"],
        [*c, "flags", "add", "-u", X, "\\Seen", *q],
        [*c, "flags", X, "-u", "alice", "\\Seen", *q],
        [*c, "flags", "add", "-u", "alice", X, *q],
        [*c, "flags", "add", "-u", "alice", "\\Seen", "mailbox", X, "all"],
        [*c, "expunge", "-u", X, *q],
        [*c, "expunge", "-u", "alice", "mailbox", X, "uid", "99"],
        [*c, "expunge", "-u", "alice", "mailbox", "INBOX", "uid", X],
        [*c, "copy", "-u", X, "Dest", *q],
        [*c, "copy", "-u", "alice", X, *q],
        [*c, "copy", "-u", "alice", "Dest", "mailbox", X, "uid", "1"],
        # mailboxes
        [*c, "mailbox", "create", "-u", X, "Box"],
        [*c, "mailbox", "create", "-u", "alice", X],
        [*c, "mailbox", "delete", "-u", "alice", X],
        [*c, "mailbox", "rename", "-u", "alice", X, "Other"],
        [*c, "mailbox", "rename", "-u", "alice", "Nope", X],
        [*c, "mailbox", "list", "-u", X],
        [*c, "mailbox", "status", "-u", X, "INBOX"],
        [*c, "mailbox", "status", "-u", "alice", X],
        [*c, "mailbox", "status", "-u", "alice", X, "INBOX"],
        [*c, "mailbox", "status", "-u", "alice", "INBOX", X],
        [*c, "import", "-u", X, md],
        [*c, "import", "-u", "alice", X],
        # replication
        [*c, "replicator", X],
        [*c, "master", "status", "-u", X],
        [*c, "master", "move", "-u", X, "INBOX", "n2"],
        [*c, "master", "move", "-u", "alice", X, "n2"],
        [*c, "master", "move", "-u", "alice", "INBOX", X],
        [*c, "sync", "-u", X],
        [*c, "sync", "-u", "alice", "--peer", X],
        [*c, "verify", "-u", X],
        [*c, "top", "--once", "--interval", X],
        # users and passwords
        [*c, "user", "add", X, "--password-stdin"],
        [*c, "user", "del", X],
        [*c, "user", "passwd", X, "--password-stdin"],
        [*c, "pw", "-s", X],
        # node, certificates, debugging
        ["init", X, "--name", "n9"],
        ["init", idir, "--name", X],
        ["init", idir, "--name", "n9", "--port", X],
        ["serve", "-c", X],
        ["pki", "init", X, "--cluster", "c"],
        ["pki", "init", str(scratch / "pki"), "--cluster", X],
        ["pki", "issue", X, "n1"],
        ["pki", "issue", str(scratch / "pki"), X],
        [*c, "debug", "decode", X],
        [*c, "debug", "connect", X],
        # local clusters
        ["cluster", "up", X],
        ["cluster", "up", "-n", X, cdir],
        ["cluster", "up", cdir, "--base-port", X],
        ["cluster", "down", X],
        ["cluster", "status", X],
        ["cluster", "partition", X, "n1"],
        ["cluster", "partition", cdir, X],
        ["cluster", "heal", X],
        ["cluster", "delay", cdir, X],
        ["cluster", "faults", X],
        ["cluster", "kill", cdir, X],
        ["cluster", "restart", cdir, X],
    ]
    return [(line, MESSAGE) for line in lines]


def run_table(cases: list[dict[str, object]], cwd: Path) -> list[dict[str, object]]:
    cases_path, results_path = cwd / "cases.json", cwd / "results.json"
    cases_path.write_text(json.dumps(cases), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(cases_path), str(results_path)],
        cwd=cwd,
        # `-c ''` falls back to $REPLICAD_CONFIG: never a node of the caller's.
        env={k: v for k, v in os.environ.items() if k != "REPLICAD_CONFIG"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    results: list[dict[str, object]] = json.loads(results_path.read_text(encoding="utf-8"))
    return results


def shorten(argv: object) -> str:
    assert isinstance(argv, list)
    return " ".join(repr(a[:30] + ("…" if len(a) > 30 else "")) for a in argv)


def test_every_subcommand_refuses_hostile_arguments(node: NodeProcess, tmp_path: Path) -> None:
    assert node.cli("save", "-u", "alice", input=MESSAGE).returncode == 0
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (tmp_path / "work").mkdir()
    values = hostile_values()
    cases: list[dict[str, object]] = []
    for line, stdin in templates(node.config, tmp_path, maildir):
        for value in [*values, ""]:
            argv = [value if word == X else word for word in line]
            cases.append({"argv": argv, "stdin": stdin.decode("latin-1"), "value": value})
    results = run_table(cases, tmp_path / "work")

    problems = []
    for case, result in zip(cases, results, strict=True):
        rc, stderr = result["rc"], str(result["stderr"])
        where = f"{shorten(case['argv'])}: exit {rc}: {stderr[-300:]!r}"
        if "Traceback" in stderr:
            problems.append(f"traceback: {where}")
        elif rc not in DOCUMENTED:
            problems.append(f"undocumented exit code: {where}")
        elif case["value"] and rc not in (64, 65):
            problems.append(f"hostile value not refused: {where}")
        elif rc != 0 and not stderr.strip():
            problems.append(f"no message: {where}")
    assert not problems, f"{len(problems)} of {len(cases)} runs:\n" + "\n".join(problems[:40])
    # Nothing hostile was created: alice still has her one message and INBOX only.
    listed = node.cli("-f", "json", "mailbox", "list", "-u", "alice")
    assert [r["mailbox"] for r in json.loads(listed.stdout)] == ["INBOX"]
    assert not (tmp_path / "init").exists() and not (tmp_path / "nocluster").exists()
    assert node.cli("mailbox", "list", "-u", "alice").returncode == 0  # the node is fine


def test_issue_examples_as_real_processes(node: NodeProcess, tmp_path: Path) -> None:
    """The command lines of the report, as a shell runs them."""
    eml = tmp_path / "some-file.eml"
    eml.write_bytes(MESSAGE)
    runs = [
        (["mailbox", "create", "-u", "alice", os.fsdecode(b"Caf\xe9")], b"mailbox name"),
        (["save", "-m", os.fsdecode(b"Caf\xe9"), "-u", "alice"], b"not valid UTF-8"),
        (["save", "-u", os.fsdecode(b"bad\xffuser")], b"user name 'bad\\xffuser'"),
        (["import", "-u", "U", str(eml)], b"is not a directory"),
    ]
    for args, said in runs:
        result = node.cli(*args, input=MESSAGE)
        assert result.returncode == 65, (args, result.stderr)
        assert b"Traceback" not in result.stderr
        assert said in result.stderr, (args, result.stderr)
