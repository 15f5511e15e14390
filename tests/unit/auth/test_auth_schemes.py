"""Password schemes: published vectors verify, wrong passwords fail, bad fields are named."""

from __future__ import annotations

import pytest

from replicad.auth.schemes import (
    MAKEABLE,
    SchemeError,
    make_password_field,
    split_password_field,
    verify_password,
)
from replicad.errors import BadInputError

# (password field as Dovecot stores it, password)
VECTORS = [
    # phc-winner-argon2 reference test vectors (t=2, m=64MiB, p=1, salt "somesalt").
    (
        "{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ"
        "$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
        "password",
    ),
    (
        "{ARGON2I}$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ"
        "$wWKIMhR9lyDFvRz9YTZweHKfbftvj+qf+YFY4NeBbtA",
        "password",
    ),
    # crypt_blowfish's test vector, as $2a$ and as Dovecot writes it ($2y$).
    ("{BLF-CRYPT}$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U"),
    ("{BLF-CRYPT}$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U"),
    # Ulrich Drepper's SHA-crypt specification vectors (also `openssl passwd -6/-5`).
    (
        "{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJ"
        "uesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
        "Hello world!",
    ),
    (
        "{SHA512-CRYPT}$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbb"
        "MCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
        "Hello world!",
    ),
    ("{SHA256-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5", "Hello world!"),
    # No {SCHEME}: CRYPT, Dovecot's default for passwd-file.
    (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJ"
        "uesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
        "Hello world!",
    ),
    ("{CRYPT}$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW", "U*U"),
    ("{PLAIN}correct horse", "correct horse"),
    ("{plain}correct horse", "correct horse"),
    ("{CLEARTEXT}pässwörd", "pässwörd"),
]


@pytest.mark.parametrize(("field", "password"), VECTORS)
def test_known_vector_verifies_and_a_wrong_password_fails(field: str, password: str) -> None:
    scheme, stored = split_password_field(field)
    assert verify_password(password, scheme, stored)
    assert verify_password(password.encode(), scheme, stored)
    assert not verify_password(password + "x", scheme, stored)
    assert not verify_password(password[:-1], scheme, stored)
    assert not verify_password("", scheme, stored)


def test_vector_with_one_changed_hash_character_fails() -> None:
    field, password = VECTORS[4]
    scheme, stored = split_password_field(field[:-1] + ("2" if field[-1] != "2" else "3"))
    assert not verify_password(password, scheme, stored)


@pytest.mark.parametrize("name", MAKEABLE)
def test_made_hash_verifies(name: str) -> None:
    field = make_password_field("s3cret-pässword", name)
    assert field.startswith("{" + name + "}")
    scheme, stored = split_password_field(field)
    assert scheme.name == name
    assert verify_password("s3cret-pässword", scheme, stored)
    assert not verify_password("s3cret-passwörd", scheme, stored)


def test_default_scheme_is_argon2id_and_salted() -> None:
    one, two = make_password_field("pw"), make_password_field("pw")
    assert one.startswith("{ARGON2ID}$argon2id$v=19$") and one != two


def test_blf_crypt_is_written_as_2y_and_refuses_passwords_it_would_cut() -> None:
    assert make_password_field("pw", "BLF-CRYPT").startswith("{BLF-CRYPT}$2y$12$")
    with pytest.raises(BadInputError, match="72 bytes"):
        make_password_field("x" * 73, "BLF-CRYPT")
    # Verifying behaves as crypt_blowfish: bytes past 72 are not used.
    scheme, stored = split_password_field(make_password_field("y" * 72, "BLF-CRYPT"))
    assert verify_password("y" * 72 + "ignored", scheme, stored)


def test_plain_refuses_a_colon() -> None:
    with pytest.raises(BadInputError, match="':'"):
        make_password_field("a:b", "PLAIN")


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("{MD5-CRYPT}$1$abc$def", "unknown password scheme {MD5-CRYPT}"),
        ("{ARGON2}$argon2id$x", "unknown password scheme"),
        ("{ARGON2ID$argon2id$v=19", "no '}'"),
        ("{ARGON2ID}$argon2i$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$abc", "does not start with"),
        ("{ARGON2ID}$argon2id$nonsense-hash-value", "not a valid Argon2"),
        ("{BLF-CRYPT}$2y$05$tooshort-hash-value", "not a bcrypt string"),
        ("{SHA512-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY", "does not start with $6$"),
        ("{SHA512-CRYPT}$6$salt$not!base64!hash", "not a SHA512-CRYPT"),
        ("abJnggxhB/yWI", "DES, MD5"),  # DES crypt, no {SCHEME}: CRYPT
        ("$1$saltsalt$qjXMvbEw8oaL.CzflDugX/", "DES, MD5"),
        ("hunter2-in-clear", "DES, MD5"),
    ],
)
def test_bad_field_is_named_without_quoting_the_hash(field: str, message: str) -> None:
    with pytest.raises(SchemeError) as info:
        split_password_field(field)
    assert message in str(info.value)
    secret = field.partition("}")[2] or field
    assert secret not in str(info.value)


def test_crypt_cannot_make_hashes_and_unknown_scheme_is_refused() -> None:
    with pytest.raises(SchemeError, match="only verify"):
        make_password_field("pw", "CRYPT")
    with pytest.raises(SchemeError, match="unknown password scheme"):
        make_password_field("pw", "SHA1")
