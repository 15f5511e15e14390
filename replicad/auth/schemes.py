"""Password schemes: Dovecot's ``{SCHEME}hash`` fields, verified and made.

CPU-bound but free of I/O; :class:`~replicad.auth.directory.UserDirectory`
runs :func:`verify_password` in a worker thread.

=================  ========================================  ==================
scheme             stored as (what Dovecot writes)           made by
=================  ========================================  ==================
``ARGON2ID``       ``$argon2id$v=19$m=…,t=…,p=…$salt$hash``  argon2-cffi (default
                                                             for new hashes)
``ARGON2I``        ``$argon2i$v=19$…``                       argon2-cffi
``BLF-CRYPT``      ``$2y$NN$…`` (``$2a$``, ``$2b$`` too)     bcrypt (written as
                                                             ``$2y$``, as Dovecot)
``SHA512-CRYPT``   ``$6$[rounds=N$]salt$hash``               libpass
``SHA256-CRYPT``   ``$5$[rounds=N$]salt$hash``               libpass
``PLAIN``          the password itself (``CLEAR``,           (tests only)
                   ``CLEARTEXT``: the same)
``CRYPT``          a crypt(3) string: ``$6$``, ``$5$`` and   verify only
                   ``$2y$``/``$2a$``/``$2b$`` are accepted
=================  ========================================  ==================

A password field without ``{SCHEME}`` is ``CRYPT``, Dovecot's
``default_pass_scheme`` for passwd-file; crypt(3) strings this module cannot
check (DES, ``$1$`` MD5, ``$y$`` yescrypt) are refused with an error for the
line, never silently taken as a clear-text password.

BLF-CRYPT uses the first 72 bytes of a password (crypt_blowfish, which
Dovecot uses, does the same when verifying); a longer password is refused
when a new BLF-CRYPT hash is made, so nobody is told a password that is not
all used.  Comparisons of secrets are constant-time (``hmac.compare_digest``
for PLAIN; the libraries do it for the others).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError
from passlib.hash import sha256_crypt, sha512_crypt

from replicad.errors import BadInputError

DEFAULT_SCHEME = "ARGON2ID"
#: bcrypt's limit; crypt_blowfish ignores the bytes past it.
BCRYPT_MAX_PASSWORD = 72
#: bcrypt work factor of new BLF-CRYPT hashes (Dovecot writes 5, too weak today).
BCRYPT_ROUNDS = 12

_ALIASES = {"CLEAR": "PLAIN", "CLEARTEXT": "PLAIN"}
_BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")


class SchemeError(BadInputError):
    """A password field names an unknown scheme or holds a malformed hash."""


@dataclass(frozen=True, slots=True)
class Scheme:
    """One ``{NAME}``: how to check a stored hash's shape, verify, and (maybe) make one."""

    name: str
    #: Why ``stored`` is not a hash of this scheme, or None.
    problem: Callable[[str], str | None]
    verify: Callable[[bytes, str], bool]
    make: Callable[[bytes], str] | None = None

    @property
    def can_make(self) -> bool:
        return self.make is not None


# --- Argon2 -------------------------------------------------------------------

_ARGON2 = argon2.PasswordHasher()  # argon2-cffi's defaults (RFC 9106 low-memory profile)
_ARGON2I = argon2.PasswordHasher(type=argon2.Type.I)


def _argon2_problem(prefix: str) -> Callable[[str], str | None]:
    def problem(stored: str) -> str | None:
        if not stored.startswith(prefix):
            return f"the hash does not start with {prefix}"
        try:
            argon2.extract_parameters(stored)
        except InvalidHashError:
            return "the hash is not a valid Argon2 PHC string"
        return None

    return problem


def _argon2_verify(password: bytes, stored: str) -> bool:
    try:
        return _ARGON2.verify(stored, password)  # the type comes from the hash
    except (VerificationError, InvalidHashError):
        return False


# --- bcrypt -------------------------------------------------------------------


def _bcrypt_problem(stored: str) -> str | None:
    if not stored.startswith(_BCRYPT_PREFIXES):
        return "the hash does not start with $2y$, $2b$ or $2a$"
    if len(stored) != 60 or not stored[4:6].isdigit() or stored[6] != "$":
        return "the hash is not a bcrypt string ($2y$NN$ and 53 characters)"
    return None


def _bcrypt_verify(password: bytes, stored: str) -> bool:
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored.encode("ascii"))
    except ValueError:
        return False


def _bcrypt_make(password: bytes) -> str:
    if len(password) > BCRYPT_MAX_PASSWORD:
        raise BadInputError(
            f"BLF-CRYPT uses only the first {BCRYPT_MAX_PASSWORD} bytes of a password; "
            f"this one has {len(password)} (use ARGON2ID)"
        )
    made = bcrypt.hashpw(password, bcrypt.gensalt(BCRYPT_ROUNDS)).decode("ascii")
    return "$2y$" + made[4:]  # the same algorithm; the prefix Dovecot writes


# --- SHA-crypt ----------------------------------------------------------------


def _sha_crypt(prefix: str, handler: Any) -> Scheme:
    name = "SHA512-CRYPT" if prefix == "$6$" else "SHA256-CRYPT"

    def problem(stored: str) -> str | None:
        if not stored.startswith(prefix):
            return f"the hash does not start with {prefix}"
        if not handler.identify(stored):
            return f"the hash is not a {name} string"
        try:
            handler.from_string(stored)
        except ValueError:
            return f"the hash is not a {name} string"
        return None

    def verify(password: bytes, stored: str) -> bool:
        try:
            return bool(handler.verify(password, stored))
        except ValueError:
            return False

    def make(password: bytes) -> str:
        made: str = handler.hash(password)
        return made

    return Scheme(name, problem, verify, make)


# --- PLAIN and CRYPT ----------------------------------------------------------


def _plain_verify(password: bytes, stored: str) -> bool:
    return hmac.compare_digest(password, stored.encode("utf-8"))


def _plain_make(password: bytes) -> str:
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError("a PLAIN password must be UTF-8") from None
    if ":" in text:
        raise BadInputError("a PLAIN password must not contain ':' (the field separator)")
    return text


def _crypt_scheme(stored: str) -> Scheme | None:
    """The scheme of a crypt(3) string by its prefix, or None if unsupported."""
    if stored.startswith("$6$"):
        return SCHEMES["SHA512-CRYPT"]
    if stored.startswith("$5$"):
        return SCHEMES["SHA256-CRYPT"]
    if stored.startswith(_BCRYPT_PREFIXES):
        return SCHEMES["BLF-CRYPT"]
    return None


def _crypt_problem(stored: str) -> str | None:
    scheme = _crypt_scheme(stored)
    if scheme is None:
        return (
            "a CRYPT hash (the scheme of a password field without {SCHEME}) must be "
            "$6$ (SHA512-CRYPT), $5$ (SHA256-CRYPT) or $2y$ (BLF-CRYPT); "
            "DES, MD5 and other crypt(3) hashes are not supported"
        )
    return scheme.problem(stored)


def _crypt_verify(password: bytes, stored: str) -> bool:
    scheme = _crypt_scheme(stored)
    return scheme is not None and scheme.verify(password, stored)


SCHEMES: dict[str, Scheme] = {
    "ARGON2ID": Scheme(
        "ARGON2ID", _argon2_problem("$argon2id$"), _argon2_verify, lambda p: _ARGON2.hash(p)
    ),
    "ARGON2I": Scheme(
        "ARGON2I", _argon2_problem("$argon2i$"), _argon2_verify, lambda p: _ARGON2I.hash(p)
    ),
    "BLF-CRYPT": Scheme("BLF-CRYPT", _bcrypt_problem, _bcrypt_verify, _bcrypt_make),
    "SHA512-CRYPT": _sha_crypt("$6$", sha512_crypt),
    "SHA256-CRYPT": _sha_crypt("$5$", sha256_crypt),
    "PLAIN": Scheme("PLAIN", lambda stored: None, _plain_verify, _plain_make),
    "CRYPT": Scheme("CRYPT", _crypt_problem, _crypt_verify),
}

#: Schemes ``replicad pw -s`` can make.
MAKEABLE = tuple(name for name, scheme in SCHEMES.items() if scheme.can_make)


def scheme_named(name: str) -> Scheme:
    """The scheme ``name`` (any case, Dovecot's aliases too); :class:`SchemeError` if unknown."""
    key = name.upper()
    key = _ALIASES.get(key, key)
    try:
        return SCHEMES[key]
    except KeyError:
        known = ", ".join(SCHEMES)
        raise SchemeError(f"unknown password scheme {{{name}}} (known: {known})") from None


def split_password_field(field: str) -> tuple[Scheme, str]:
    """``{SCHEME}hash`` → (scheme, hash), checked; no ``{…}`` prefix means CRYPT.

    :class:`SchemeError` (which never quotes the hash) for an unknown scheme
    or a hash that is not of its scheme's shape.
    """
    name, stored = "CRYPT", field
    if field.startswith("{"):
        close = field.find("}")
        if close < 0:
            raise SchemeError("the password field starts with '{' but has no '}'")
        name, stored = field[1:close], field[close + 1 :]
    scheme = scheme_named(name)
    problem = scheme.problem(stored)
    if problem is not None:
        raise SchemeError(f"{{{scheme.name}}}: {problem}")
    return scheme, stored


def password_bytes(password: str | bytes) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def verify_password(password: str | bytes, scheme: Scheme, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (CPU-bound: call it off the event loop)."""
    return scheme.verify(password_bytes(password), stored)


def make_password_field(password: str | bytes, scheme_name: str = DEFAULT_SCHEME) -> str:
    """``{SCHEME}hash`` of ``password`` for the passwd-file; :class:`BadInputError` if
    the scheme cannot make hashes (CRYPT) or refuses this password."""
    scheme = scheme_named(scheme_name)
    if scheme.make is None:
        raise SchemeError(
            f"{{{scheme.name}}} can only verify existing hashes; "
            f"choose one of {', '.join(MAKEABLE)}"
        )
    return f"{{{scheme.name}}}{scheme.make(password_bytes(password))}"
