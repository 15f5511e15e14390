"""The passwd-file parser and its line edits (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.auth.passwdfile import add_user, parse_passwd_file, remove_user, set_password
from replicad.errors import AlreadyExistsError, ExitCode, NoSuchAccountError

PATH = Path("/etc/replicad/users")
SHA = (
    "{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJ"
    "uesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
)
BLF = "{BLF-CRYPT}$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"


def test_full_line_fields() -> None:
    data = (
        f"alice:{SHA}:1000:1000:Alice A:/home/alice:/bin/false:"
        "userdb_quota_rule=*:storage=1G nopassword\n"
    ).encode()
    parsed = parse_passwd_file(data, PATH)
    assert parsed.errors == ()
    entry = parsed.entries["alice"]
    assert entry.scheme == "SHA512-CRYPT"
    assert entry.password_hash.startswith("$6$saltstring$")
    assert (entry.uid, entry.gid, entry.home) == ("1000", "1000", "/home/alice")
    assert entry.extra == ("userdb_quota_rule=*:storage=1G", "nopassword")
    assert entry.line == 1
    assert entry.password_hash not in repr(entry)


def test_short_forms_comments_blank_lines_and_crlf() -> None:
    data = (
        b"# users\n\n   \n  # indented comment\n"
        + f"bob:{BLF}\r\n".encode()
        + b"carol:{PLAIN}pw:::\n"
        + b"dave:\n"  # no password: exists, never verifies
        + b"erin::5000:5000::/srv/erin::"  # no final newline
    )
    parsed = parse_passwd_file(data, PATH)
    assert parsed.errors == ()
    assert list(parsed.entries) == ["bob", "carol", "dave", "erin"]
    assert parsed.entries["bob"].scheme == "BLF-CRYPT"
    assert parsed.entries["bob"].password_hash.endswith("OeW")  # the CR is not in the hash
    assert parsed.entries["carol"].password_hash == "pw"
    assert parsed.entries["carol"].uid is None
    assert not parsed.entries["dave"].has_password
    assert parsed.entries["erin"].home == "/srv/erin"
    assert parsed.entries["bob"].line == 5


def test_names_are_normalised_and_duplicates_reported() -> None:
    data = b"Alice@Example.ORG:{PLAIN}one\nalice@example.org:{PLAIN}two\n"
    parsed = parse_passwd_file(data, PATH)
    assert parsed.entries["alice@example.org"].password_hash == "one"  # the first wins
    [error] = parsed.errors
    assert error.line == 2 and "already defined on line 1" in str(error)
    kept = parse_passwd_file(data, PATH, "%u")
    assert set(kept.entries) == {"Alice@Example.ORG", "alice@example.org"}
    local = parse_passwd_file(b"Alice@a.org:{PLAIN}x\n", PATH, "%Ln")
    assert list(local.entries) == ["alice"]


def test_broken_lines_are_named_by_number_and_the_others_still_work() -> None:
    lines = [
        b"# header",
        b"alice:{PLAIN}a",
        b"just-a-password-pasted-here",  # 3: no ':'
        b"bob:{MD5}0123456789abcdef",  # 4: unknown scheme
        b":{PLAIN}nobody",  # 5: empty user
        b"bad name:{PLAIN}x",  # 6: space in the name
        b"carol:{SHA512-CRYPT}$5$notsha512",  # 7: wrong hash shape
        b"dave:{PLAIN}caf\xe9",  # 8: not UTF-8
        b"erin:hunter2",  # 9: CRYPT, but not a crypt hash
        b"frank:{PLAIN}f",
    ]
    parsed = parse_passwd_file(b"\n".join(lines) + b"\n", PATH)
    assert list(parsed.entries) == ["alice", "frank"]
    by_line = {e.line: e for e in parsed.errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9]
    assert all(str(e).startswith(f"{PATH}:{e.line}: ") for e in parsed.errors)
    assert "no ':'" in by_line[3].reason
    assert "unknown password scheme {MD5}" in by_line[4].reason and by_line[4].user == "bob"
    assert "empty" in by_line[5].reason
    assert by_line[7].user == "carol"
    assert "UTF-8" in by_line[8].reason
    text = " ".join(str(e) for e in parsed.errors)
    for secret in ("just-a-password", "0123456789abcdef", "notsha512", "hunter2", "nobody"):
        assert secret not in text


ORIGINAL = (
    b"# managed by hand, keep this comment\n"
    b"alice:{PLAIN}a:1000:1000::/home/alice::userdb_x=y\r\n"
    b"\n"
    b"broken line here\n"
    b"Bob:{PLAIN}b\n"
    b"# trailing comment"
)


def test_add_appends_and_keeps_every_other_byte() -> None:
    new = add_user(ORIGINAL, "carol", "{PLAIN}c")
    assert new == ORIGINAL + b"\ncarol:{PLAIN}c\n"
    assert add_user(b"", "carol", "{PLAIN}c") == b"carol:{PLAIN}c\n"
    with pytest.raises(AlreadyExistsError, match="line 5"):
        add_user(ORIGINAL, "bob", "{PLAIN}x")  # Bob under %Lu


def test_set_password_replaces_only_the_password_field() -> None:
    new = set_password(ORIGINAL, "alice", "{PLAIN}new")
    assert new == ORIGINAL.replace(b"alice:{PLAIN}a:", b"alice:{PLAIN}new:")
    fixed = set_password(b"x:{MD5}junk:1:2\n", "x", "{PLAIN}ok")
    assert fixed == b"x:{PLAIN}ok:1:2\n"  # a line broken by its scheme is repaired
    with pytest.raises(NoSuchAccountError) as info:
        set_password(ORIGINAL, "carol", "{PLAIN}c")
    assert info.value.exit_code == ExitCode.NO_USER == 67


def test_remove_drops_every_line_of_the_user_and_nothing_else() -> None:
    new = remove_user(ORIGINAL, "bob")
    assert new == ORIGINAL.replace(b"Bob:{PLAIN}b\n", b"")
    dup = b"a:{PLAIN}1\nb:{PLAIN}2\nA:{PLAIN}3\n"
    assert remove_user(dup, "a") == b"b:{PLAIN}2\n"
    with pytest.raises(NoSuchAccountError):
        remove_user(ORIGINAL, "carol")
    with pytest.raises(NoSuchAccountError):
        remove_user(b"", "carol")
