"""User-name normalisation (Dovecot's auth_username_format) and validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.auth import USERNAME_FORMATS, normalise_user, validate_username_format
from replicad.errors import BadInputError, ConfigError, ExitCode
from replicad.usernames import user_name_problem, validate_user_name


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("Alice@Example.ORG", "%Lu", "alice@example.org"),
        ("alice@example.org", "%Lu", "alice@example.org"),
        ("ALICE", "%Lu", "alice"),
        ("Alice@Example.ORG", "%u", "Alice@Example.ORG"),
        ("Alice@Example.ORG", "%Ln", "alice"),
        ("Alice", "%Ln", "alice"),
        ("Alice@Example.ORG", "%n", "Alice"),
        ("a@b@c", "%n", "a"),  # the local part ends at the first @, as Dovecot's %n
        ("@example.org", "%Ln", ""),
        ("ÄNNE@Example.org", "%Lu", "Änne@example.org"),  # ASCII-only, as Dovecot's %L
        ("KELVIN\u212a@x", "%Lu", "kelvin\u212a@x"),
    ],
)
def test_normalise_user(name: str, fmt: str, expected: str) -> None:
    assert normalise_user(name, fmt) == expected


def test_default_format_is_lowercase_whole_name() -> None:
    assert normalise_user("Bob@Example.Net") == "bob@example.net"


@given(st.text(max_size=40), st.sampled_from(USERNAME_FORMATS))
def test_every_format_is_idempotent(name: str, fmt: str) -> None:
    once = normalise_user(name, fmt)
    assert normalise_user(once, fmt) == once


@pytest.mark.parametrize(
    ("fmt", "hint"),
    [("%lu", '"%Lu"'), ("%L", '"%Lu"'), ("%N", '"%n"'), (" %Ln", '"%Ln"'), ("%u@%d", None)],
)
def test_unsupported_format_is_a_config_error_with_a_hint(fmt: str, hint: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        validate_username_format(fmt)
    message = str(info.value)
    assert message.startswith("auth.username_format") and "supported" in message
    if hint:
        assert f"did you mean {hint}" in message
    with pytest.raises(ConfigError):
        normalise_user("alice", fmt)
    assert info.value.exit_code == ExitCode.BAD_INPUT


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("a:b", "':'"),
        ("#alice", "'#'"),
        ("al ice", "white space"),
        ("al\tice", "white space"),
        ("al\x00ice", "control"),
        ("al\x7fice", "control"),
        ("al\u2028ice", "control"),
        ("x" * 256, "at most 255 bytes"),
        ("é" * 128, "at most 255 bytes"),  # 256 bytes of UTF-8
        ("bad\udcff", "valid UTF-8"),  # an undecodable byte of argv (surrogateescape)
    ],
)
def test_invalid_user_names(name: str, problem: str) -> None:
    found = user_name_problem(name)
    assert found is not None and problem in found
    with pytest.raises(BadInputError):
        validate_user_name(name)


@pytest.mark.parametrize(
    "name", ["alice", "alice@example.org", "x" * 255, "é" * 127, "o'brien+tag"]
)
def test_valid_user_names(name: str) -> None:
    assert user_name_problem(name) is None
    assert validate_user_name(name) == name
