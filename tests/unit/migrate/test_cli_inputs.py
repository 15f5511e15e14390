"""``replicad migrate add`` refuses bad input before it reaches a node (exit 65/64)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.cli.main import main


def add(tmp_path: Path, *extra: str) -> list[str]:
    return ["-c", str(tmp_path / "absent.toml"), "migrate", "add", *extra]


def test_bad_source_users_or_passwords_exit_65_without_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    assert main(add(tmp_path, "--source", "pop3://h", "-u", "a", "--password-file", str(pw))) == 65
    assert "imap://HOST" in capsys.readouterr().err
    users = tmp_path / "users"
    users.write_text("a x\nb x\n")
    code = main(
        add(tmp_path, "--source", "imap://h", "--users", str(users), "--password-file", str(pw))
    )
    assert code == 65
    assert "already on line 1" in capsys.readouterr().err
    users.write_text("a\nb\n")
    pw.write_text("a only-a\n")
    code = main(
        add(tmp_path, "--source", "imap://h", "--users", str(users), "--password-file", str(pw))
    )
    assert code == 65
    err = capsys.readouterr().err
    assert "'b'" in err and "only-a" not in err  # a password is never echoed


def test_users_and_user_are_exclusive_and_one_is_required(tmp_path: Path) -> None:
    pw = str(tmp_path / "pw")
    assert main(add(tmp_path, "--source", "imap://h", "--password-file", pw)) == 64
    assert (
        main(add(tmp_path, "--source", "imap://h", "-u", "a", "--users", pw, "--password-file", pw))
        == 64
    )


def test_per_host_and_source_trust_options_are_checked_before_a_node(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    base = ["--source", "imaps://h", "-u", "a", "--password-file", str(pw)]
    assert main(add(tmp_path, *base, "--per-host", "0")) == 64
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert main(add(tmp_path, *base, "--source-ca", str(ca), "--source-insecure")) == 64
    assert main(add(tmp_path, *base, "--source-ca", str(tmp_path / "absent.pem"))) == 65
