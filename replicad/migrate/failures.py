"""What went wrong with a migration source, and whether to try again (pure).

A source failure is one of six classes (DESIGN of ``replicad migrate``,
docs/architecture.md §12): ``auth`` (the login was refused), ``throttled``
(the server asks us to slow down or has too many connections), ``network``
(no connection, a reset, a timeout), ``protocol`` (an answer we cannot
use, a command the server refused), ``quota`` (the target store is full
or over quota) and ``source-changed`` (the source changed under a pass in
a way the pass cannot absorb: a folder's UIDVALIDITY moved mid-pass).

``throttled``, ``network``, ``quota`` and ``source-changed`` are transient:
the job retries them after an exponential backoff with full jitter
(:func:`backoff_s`, AWS's "full jitter": a uniform draw below the capped
exponential, so many workers failing together do not retry together).
``auth`` and ``protocol`` are permanent: retrying cannot help, the user's
job stops ``failed`` with the reason until an operator runs ``migrate
retry``.  One user's failure never stops the others' jobs.

Pure: classification reads exception types and server text only; the
backoff takes its random draw as an argument.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from replicad.errors import (
    DurabilityError,
    ExitCode,
    ReplicadError,
    StoreFullError,
    TemporaryError,
    UnreachableError,
)

#: First retry delay and the cap of the exponential backoff.
BACKOFF_BASE_S: Final = 2.0
BACKOFF_CAP_S: Final = 300.0
#: Transient failures in a row after which a user's job is failed anyway.
MAX_TRANSIENT_ATTEMPTS: Final = 12


class FailureClass(enum.Enum):
    AUTH = "auth"
    THROTTLED = "throttled"
    NETWORK = "network"
    PROTOCOL = "protocol"
    QUOTA = "quota"
    SOURCE_CHANGED = "source-changed"

    @property
    def transient(self) -> bool:
        """Whether a retry after a backoff can succeed."""
        return self not in (FailureClass.AUTH, FailureClass.PROTOCOL)


class SourceError(ReplicadError):
    """A migration source failed; ``failure`` says how (and whether to retry)."""

    exit_code = ExitCode.TEMPORARY

    def __init__(self, failure: FailureClass, reason: str) -> None:
        super().__init__(f"{failure.value}: {reason}")
        self.failure = failure
        self.reason = reason


# Response codes (RFC 5530) and the words servers use where they give none.
_AUTH_CODES: Final = re.compile(
    r"\[(AUTHENTICATIONFAILED|AUTHORIZATIONFAILED|EXPIRED|PRIVACYREQUIRED)\]"
    r"|authentication failed|invalid credentials|login failed",
    re.IGNORECASE,
)
_THROTTLE_CODES: Final = re.compile(
    r"\[(UNAVAILABLE|LIMIT|INUSE)\]|too many|throttl|try again later|rate limit",
    re.IGNORECASE,
)
_QUOTA_CODES: Final = re.compile(r"\[(OVERQUOTA)\]|quota", re.IGNORECASE)


def classify_server_text(text: str, *, at_login: bool) -> FailureClass:
    """The class of a NO/BAD/BYE the source answered, from its text.

    At login, anything not recognisably a throttle or an outage is taken as a
    refused login (servers word it in many ways; RFC 5530 codes first)."""
    if _THROTTLE_CODES.search(text):
        return FailureClass.THROTTLED
    if _AUTH_CODES.search(text) or at_login:
        return FailureClass.AUTH
    if _QUOTA_CODES.search(text):
        return FailureClass.QUOTA
    return FailureClass.PROTOCOL


def classify_target_error(exc: ReplicadError) -> FailureClass:
    """The class of a failure of this cluster's own write path."""
    if isinstance(exc, StoreFullError):
        return FailureClass.QUOTA
    if isinstance(exc, (DurabilityError, TemporaryError, UnreachableError)):
        return FailureClass.NETWORK
    return FailureClass.PROTOCOL


def backoff_s(attempt: int, draw: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry).

    ``draw`` is uniform in [0, 1): the wait is ``draw`` times the capped
    exponential ``min(cap, base * 2**(attempt-1))``, never below 0.1 s."""
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if not 0.0 <= draw < 1.0:
        raise ValueError("draw must be in [0, 1)")
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(attempt - 1, 30))
    return max(0.1, draw * ceiling)
