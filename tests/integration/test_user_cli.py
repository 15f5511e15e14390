"""``replicad user`` and ``replicad pw`` end to end, as subprocesses, with their exit codes.

These commands edit the passwd-file of ``[auth] passwd_file`` directly; no
node is involved (69 and 75 of the node contract do not arise, except 75
when another edit holds the lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import stat
import subprocess
import termios
import time
from pathlib import Path

import pytest
import trio

from replicad.auth import UserDirectory
from replicad.auth.edit import LOCK_TIMEOUT, lock_path
from replicad.auth.schemes import split_password_field, verify_password
from tests.conftest import REPLICAD, run_cli


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "replicad.toml"
    path.write_text('[node]\nname = "n1"\ndata_dir = "data"\n[auth]\npasswd_file = "users"\n')
    return path


def cli(config: Path, *args: str | bytes, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*REPLICAD, "-c", str(config), *args],
        input=input,
        capture_output=True,
        check=False,
        timeout=120,
    )


def verifies(path: Path, user: str, password: str) -> bool:
    return trio.run(UserDirectory(path).verify, user, password)


def test_add_list_passwd_del(config: Path) -> None:
    users = config.parent / "users"
    added = cli(config, "user", "add", "Alice@Example.ORG", "--password-stdin", input=b"pw one\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout == b""  # silent on success, as the other edit commands
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    [line] = users.read_text().splitlines()
    assert line.startswith("alice@example.org:{ARGON2ID}$argon2id$v=19$")
    assert verifies(users, "alice@example.org", "pw one")  # one final newline dropped
    doc = cli(config, "-f", "json", "user", "add", "bob", "--password-stdin", input=b"pw two")
    assert json.loads(doc.stdout) == {"user": "bob", "passwd_file": str(users)}

    table = cli(config, "user", "list")
    assert table.returncode == 0 and table.stdout.decode().split() == [
        "user",
        "alice@example.org",
        "bob",
    ]
    listed = cli(config, "user", "list", "-f", "json")
    assert json.loads(listed.stdout) == [{"user": "alice@example.org"}, {"user": "bob"}]
    assert b"argon2" not in table.stdout + listed.stdout

    changed = cli(config, "user", "passwd", "ALICE@example.org", "--password-stdin", input=b"new")
    assert changed.returncode == 0, changed.stderr
    assert verifies(users, "alice@example.org", "new")
    assert not verifies(users, "alice@example.org", "pw one")

    removed = cli(config, "user", "del", "bob")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(cli(config, "-f", "json", "user", "list").stdout) == [
        {"user": "alice@example.org"}
    ]


def test_edits_keep_comments_other_lines_and_the_file_mode(config: Path) -> None:
    users = config.parent / "users"
    original = (
        "# hand-written header\nkeep:{PLAIN}k:1000:1000::/home/keep::userdb_x=1\n"
        "broken line kept as it is\n\n# footer\n"
    )
    users.write_text(original)
    users.chmod(0o640)
    assert cli(config, "user", "add", "new", "--password-stdin", input=b"n").returncode == 0
    text = users.read_text()
    assert text.startswith(original) and text.count("\n") == original.count("\n") + 1
    assert stat.S_IMODE(users.stat().st_mode) == 0o640
    assert cli(config, "user", "passwd", "keep", "--password-stdin", input=b"k2").returncode == 0
    keep = [line for line in users.read_text().splitlines() if line.startswith("keep:")]
    assert keep[0].endswith(":1000:1000::/home/keep::userdb_x=1")
    assert cli(config, "user", "del", "new").returncode == 0
    assert users.read_text() == original.replace("keep:{PLAIN}k:", keep[0].split(":1000")[0] + ":")
    listed = cli(config, "user", "list")
    assert b"users:3: no ':' after the user name" in listed.stderr  # the broken line, named
    assert listed.stdout.split() == [b"user", b"keep"]
    assert not list(config.parent.glob(".users.tmp.*"))


def test_pw_prints_a_hash_of_stdin(config: Path) -> None:
    made = cli(config, "pw", input=b"s3cret\n")
    assert made.returncode == 0, made.stderr
    field = made.stdout.decode().strip()
    assert field.startswith("{ARGON2ID}$argon2id$")
    scheme, stored = split_password_field(field)
    assert verify_password("s3cret", scheme, stored)
    for name in ("SHA512-CRYPT", "blf-crypt", "PLAIN"):
        made = run_cli("pw", "-s", name, input=b"s3cret")  # needs no config
        assert made.returncode == 0, made.stderr
        scheme, stored = split_password_field(made.stdout.decode().strip())
        assert scheme.name == name.upper() and verify_password("s3cret", scheme, stored)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user", "add", "carol"], b"use --password-stdin"),  # no terminal, no flag
        (["user", "passwd", "carol"], b"use --password-stdin"),
        (["user"], b"ACTION"),
        (["user", "frobnicate"], b"invalid choice"),
        (["pw", "-s", "MD5"], b"unknown password scheme {MD5}"),
        (["pw", "-s", "CRYPT"], b"can only verify"),
    ],
)
def test_usage_errors_exit_64(config: Path, args: list[str], message: bytes) -> None:
    if args[:2] == ["user", "passwd"]:
        cli(config, "user", "add", "carol", "--password-stdin", input=b"c")
    result = cli(config, *args, input=b"")
    assert result.returncode == 64, result.stderr
    assert message in result.stderr.replace(b"give it on stdin with ", b"use ")


@pytest.mark.parametrize(
    ("name", "stdin", "message"),
    [
        (b"a:b", b"pw", b"must not contain ':'"),
        (b"al\x01ice", b"pw", b"control characters"),
        (b"al ice", b"pw", b"white space"),
        (b"", b"pw", b"must not be empty"),
        (b"x" * 256, b"pw", b"at most 255 bytes"),
        (b"caf\xe9", b"pw", b"valid UTF-8"),
        (b"#root", b"pw", b"'#'"),
        (b"dave", b"", b"the password is empty"),
        (b"dave", b"\n", b"the password is empty"),
        (b"dave", b"a\x00b", b"NUL or line breaks"),
        (b"dave", b"two\nlines\n", b"NUL or line breaks"),
        (b"dave", b"\xff\xfe", b"not valid UTF-8"),
        (b"dave", b"x" * 5000, b"longer than 4096 bytes"),
    ],
)
def test_bad_input_exits_65(config: Path, name: bytes, stdin: bytes, message: bytes) -> None:
    result = cli(config, "user", "add", name, "--password-stdin", input=stdin)
    assert result.returncode == 65, result.stderr
    assert message in result.stderr
    assert (
        not (config.parent / "users").exists()
        or b"dave" not in (config.parent / "users").read_bytes()
    )


def test_existing_user_and_config_problems_exit_65(config: Path, tmp_path: Path) -> None:
    assert cli(config, "user", "add", "erin", "--password-stdin", input=b"e").returncode == 0
    again = cli(config, "user", "add", "ERIN", "--password-stdin", input=b"x")
    assert again.returncode == 65 and b"already exists" in again.stderr
    no_auth = tmp_path / "plain.toml"
    no_auth.write_text('[node]\nname = "n1"\ndata_dir = "data"\n')
    result = cli(no_auth, "user", "list")
    assert result.returncode == 65 and b"auth.passwd_file" in result.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text('[node]\nname = "n1"\ndata_dir = "d"\n[auth]\nusername_format = "%lu"\n')
    result = cli(typo, "user", "list")
    assert result.returncode == 65 and b'did you mean "%Lu"' in result.stderr


def test_missing_user_exits_67_and_missing_file_68(config: Path) -> None:
    users = config.parent / "users"
    missing_file = cli(config, "user", "list")
    assert missing_file.returncode == 68 and b"does not exist" in missing_file.stderr
    assert cli(config, "user", "del", "frank").returncode == 67
    assert cli(config, "user", "add", "gina", "--password-stdin", input=b"g").returncode == 0
    before = users.read_bytes()
    deleted = cli(config, "user", "del", "frank")
    assert deleted.returncode == 67
    assert deleted.stderr.strip() == f"replicad: no such user 'frank' in {users}".encode()
    changed = cli(config, "user", "passwd", "frank", "--password-stdin", input=b"f")
    assert changed.returncode == 67 and b"no such user 'frank'" in changed.stderr
    assert users.read_bytes() == before


def test_an_edit_waits_for_the_lock_then_exits_75(config: Path) -> None:
    users = config.parent / "users"
    fd = os.open(lock_path(users), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = time.monotonic()
        result = cli(config, "user", "add", "hank", "--password-stdin", input=b"h")
        assert result.returncode == 75, result.stderr
        assert time.monotonic() - start >= LOCK_TIMEOUT
        assert b"being edited by another process" in result.stderr
    finally:
        os.close(fd)
    assert not users.exists()


def test_concurrent_adds_keep_every_user(config: Path) -> None:
    names = [f"user{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [*REPLICAD, "-c", str(config), "user", "add", name, "--password-stdin"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    for proc, name in zip(procs, names, strict=True):
        _, err = proc.communicate(f"pw-{name}".encode(), timeout=120)
        assert proc.returncode == 0, err
    users = config.parent / "users"
    listed = json.loads(cli(config, "-f", "json", "user", "list").stdout)
    assert sorted(row["user"] for row in listed) == names
    assert all(verifies(users, name, f"pw-{name}") for name in names)


def _prompted(config: Path, name: str, answers: list[bytes]) -> tuple[int, bytes]:
    """Run ``user add NAME`` on a terminal, answering each password prompt."""
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [*REPLICAD, "-c", str(config), "user", "add", name],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    seen = b""
    pending = list(answers)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                seen += os.read(master, 1024)
            except OSError:
                break
        if pending and seen.count(b"assword: ") > len(answers) - len(pending):
            os.write(master, pending.pop(0) + b"\n")
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, seen


def test_add_asks_twice_on_a_terminal(config: Path) -> None:
    code, seen = _prompted(config, "ivy", [b"tty-pw", b"tty-pw"])
    assert code == 0, seen
    assert b"Password: " in seen and b"Retype password: " in seen
    assert b"tty-pw" not in seen  # not echoed
    assert verifies(config.parent / "users", "ivy", "tty-pw")
    code, seen = _prompted(config, "jay", [b"one", b"two"])
    assert code == 65 and b"do not match" in seen
