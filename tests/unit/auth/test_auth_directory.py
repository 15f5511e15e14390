"""UserDirectory: lookups, live re-reads of the file, and verification off the event loop."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
import trio

import replicad.auth.directory as directory_module
from replicad.auth import UserDirectory, UserEntry
from replicad.auth.schemes import Scheme

SHA = (
    "{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJ"
    "uesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
)
ARGON = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ"
    "$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replace_file(path: Path, text: str) -> None:
    """What `replicad user` and most editors do: a new file renamed into place."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"# users\nAlice@Example.org:{SHA}:1000:1000::/home/alice::\nbob:{ARGON}\n")
    return path


def test_lookup_normalises_and_returns_the_entry(users_file: Path) -> None:
    users = UserDirectory(users_file)
    entry = users.lookup("ALICE@example.ORG")
    assert isinstance(entry, UserEntry)
    assert entry.user == "alice@example.org" and entry.home == "/home/alice"
    assert users.lookup("nobody") is None
    assert users.users() == ["alice@example.org", "bob"]
    local = UserDirectory(users_file, "%Ln")
    assert local.lookup("Alice@elsewhere.net") is not None
    assert local.lookup("alice") is not None


async def test_verify_known_vectors_and_failures(users_file: Path) -> None:
    users = UserDirectory(users_file)
    assert await users.verify("alice@example.org", "Hello world!")
    assert await users.verify("Alice@EXAMPLE.org", b"Hello world!")
    assert not await users.verify("alice@example.org", "hello world!")
    assert await users.verify("bob", "password")
    assert not await users.verify("bob", "Password")
    assert not await users.verify("nobody", "password")


def test_a_changed_file_is_picked_up_without_restart(users_file: Path) -> None:
    clock = Clock()
    users = UserDirectory(users_file, clock=clock)
    assert users.lookup("carol") is None and users.loads == 1
    replace_file(users_file, users_file.read_text() + "carol:{PLAIN}c\n")
    # Within the check interval the copy in memory is used: one stat a second at most.
    clock.now += 0.5
    assert users.lookup("carol") is None
    clock.now += 0.6
    assert users.lookup("carol") is not None and users.loads == 2
    # Unchanged on disk: stat'ed again, not read again.
    clock.now += 5
    assert users.lookup("carol") is not None and users.loads == 2
    # Edited in place (same inode, other size and mtime) is noticed too.
    with users_file.open("a") as fh:
        fh.write("dave:{PLAIN}d\n")
    clock.now += 1.1
    assert users.lookup("dave") is not None and users.loads == 3


async def test_a_changed_password_takes_effect(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("erin:{PLAIN}old\n")
    clock = Clock()
    users = UserDirectory(path, clock=clock)
    assert await users.verify("erin", "old")
    replace_file(path, "erin:{PLAIN}new\n")
    clock.now += 2
    assert await users.verify("erin", "new")
    assert not await users.verify("erin", "old")


def test_broken_line_is_logged_with_its_number_and_others_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users"
    path.write_text(
        "alice:{PLAIN}a\nbob:{NOSUCH}s3cr3t-hash\njust-a-pasted-password\ncarol:{PLAIN}c\n"
    )
    caplog.set_level(logging.DEBUG, logger="replicad")
    users = UserDirectory(path)
    assert users.users() == ["alice", "carol"]
    assert [e.line for e in users.errors] == [2, 3]
    bad = [r for r in caplog.records if r.getMessage() == "auth.passwd_file_bad_line"]
    assert [r.kv["line"] for r in bad] == [2, 3]  # type: ignore[attr-defined]
    assert all(r.kv["path"] == path for r in bad)  # type: ignore[attr-defined]
    assert bad[0].kv["user"] == "bob"  # type: ignore[attr-defined]
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'kv', '')}" for r in caplog.records)
    assert "s3cr3t-hash" not in logged and "just-a-pasted-password" not in logged


def test_unreadable_file_keeps_the_last_good_copy(
    users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    users = UserDirectory(users_file, clock=clock)
    assert users.lookup("bob") is not None
    caplog.set_level(logging.INFO, logger="replicad")
    users_file.unlink()
    for _ in range(3):
        clock.now += 1.5
        assert users.lookup("bob") is not None
    unreadable = [r for r in caplog.records if r.getMessage() == "auth.passwd_file_unreadable"]
    assert len(unreadable) == 1  # once per reason, not once a second
    assert unreadable[0].levelno == logging.ERROR
    assert unreadable[0].kv["using"] == "last good copy"  # type: ignore[attr-defined]
    users_file.write_text("zoe:{PLAIN}z\n")
    clock.now += 1.5
    assert users.lookup("bob") is None and users.lookup("zoe") is not None


def test_missing_at_start_is_empty_until_the_file_appears(tmp_path: Path) -> None:
    clock = Clock()
    users = UserDirectory(tmp_path / "users", clock=clock)
    assert users.lookup("alice") is None and users.users() == []
    (tmp_path / "users").write_text("alice:{PLAIN}a\n")
    clock.now += 1.5
    assert users.lookup("alice") is not None


async def test_verification_runs_off_the_event_loop(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash that only finishes once another task has run: on the event loop
    it would wait for a tick that can never come, and fail."""
    ticks = 0
    enough_ticks = threading.Event()
    real_verify = directory_module.verify_password

    def slow_verify(password: str | bytes, scheme: Scheme, stored: str) -> bool:
        assert enough_ticks.wait(timeout=10), "the event loop did not run during the hash"
        return real_verify(password, scheme, stored)

    monkeypatch.setattr(directory_module, "verify_password", slow_verify)
    users = UserDirectory(users_file)

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            if ticks >= 20:
                enough_ticks.set()
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        assert await users.verify("alice@example.org", "Hello world!")
        nursery.cancel_scope.cancel()
    assert ticks >= 20


async def test_real_hash_does_not_stall_other_tasks(users_file: Path) -> None:
    users = UserDirectory(users_file)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.01)
        before = ticks
        start = trio.current_time()
        assert await users.verify("bob", "password")  # Argon2id, 64 MiB: tens of ms
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    # A stalled loop would tick once at most while the hash ran.
    assert ticks - before >= max(3, int(elapsed / 0.001 / 10))


async def test_a_login_flood_hashes_at_most_max_verifying_at_once(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def counting_verify(password: str | bytes, scheme: Scheme, stored: str) -> bool:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        release.wait(timeout=10)
        with lock:
            inside -= 1
        return False

    monkeypatch.setattr(directory_module, "verify_password", counting_verify)
    users = UserDirectory(users_file, max_verifying=2)
    results: list[bool] = []

    async def login() -> None:
        results.append(await users.verify("bob", "guess"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(login)
        await trio.sleep(0.2)
        assert most == 2  # the others wait for a thread
        release.set()
    assert results == [False] * 8 and most == 2


async def test_failed_verification_logs_the_user_and_no_secret(
    users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="replicad")
    users = UserDirectory(users_file)
    assert not await users.verify("bob", "wrong-Pa55word")
    assert not await users.verify("nobody", "other-Pa55word")
    failed = [r for r in caplog.records if r.getMessage() == "auth.verify_failed"]
    assert [r.kv for r in failed] == [  # type: ignore[attr-defined]
        {"user": "bob", "reason": "password_mismatch"},
        {"user": "nobody", "reason": "no_such_user"},
    ]
    text = caplog.text + " ".join(str(getattr(r, "kv", "")) for r in caplog.records)
    for secret in ("wrong-Pa55word", "other-Pa55word", "CTFhFdXPJO1aFaMaO6Mm5c8y", "svn8UoSV"):
        assert secret not in text
