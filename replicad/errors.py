"""The exception hierarchy of replicad.

Every error a user or a peer can cause is a :class:`ReplicadError` carrying the
process exit code of docs/architecture.md §9, so the command line maps any failure to the
right code in one place, and errors can cross the admin socket by name.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the command-line contract (docs/architecture.md §9, sysexits.h values)."""

    OK = 0
    OTHER = 1
    USAGE = 64
    BAD_INPUT = 65
    NO_USER = 67  # EX_NOUSER: no such user (mail store or passwd-file)
    NOT_FOUND = 68  # no such mailbox, message, file or cluster
    UNREACHABLE = 69
    TEMPORARY = 75


class ReplicadError(Exception):
    """Root of every replicad error; ``exit_code`` is what the CLI exits with."""

    exit_code: ExitCode = ExitCode.OTHER

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ReplicadError):
    """The command line itself is wrong (unknown option, missing argument)."""

    exit_code = ExitCode.USAGE


class BadInputError(ReplicadError):
    """The input is malformed: a bad UID set, flag name, message, or file."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(BadInputError):
    """The node configuration is invalid; the message names the bad key."""


class ProtocolError(BadInputError):
    """A frame or handshake violates the wire protocol (I9)."""


class UidNotAboveError(BadInputError):
    """An append at a given UID (a migration) below the mailbox's UIDNEXT (I3)."""


class AlreadyExistsError(BadInputError):
    """The mailbox (or other object) to create already exists."""


class NotFoundError(ReplicadError):
    """No such mailbox, message, file or cluster: exit 68.  A missing *user*
    is :class:`NoSuchUserError` (67)."""

    exit_code = ExitCode.NOT_FOUND


class NoSuchUserError(NotFoundError):
    """No such user: exit 67, EX_NOUSER, as sysexits.h, Postfix's ``pipe(8)``
    and ``doveadm`` use it.  Raised when the mail store holds no mailbox of
    the user; still a :class:`NotFoundError` for callers that catch any
    missing object."""

    exit_code = ExitCode.NO_USER


class NoSuchAccountError(NoSuchUserError):
    """No such user in the passwd-file (``[auth] passwd_file``): exit 67 like
    every unknown user; the class name says which directory was asked."""


class NoSuchMailboxError(NotFoundError):
    pass


class MailboxDeletedError(NoSuchMailboxError):
    """The mailbox was deleted here: a DELETE wins over concurrent writes, so
    nothing may recreate it (resync.md, mailbox conflicts)."""


class NoSuchMessageError(NotFoundError):
    pass


class UnreachableError(ReplicadError):
    """The node (or the peer a command needs) cannot be reached."""

    exit_code = ExitCode.UNREACHABLE


class OutcomeUnknownError(UnreachableError):
    """The link broke after a command was sent and before its answer: the
    peer may or may not have carried it out."""


class TemporaryError(ReplicadError):
    """A condition that may clear by itself; the caller should retry later."""

    exit_code = ExitCode.TEMPORARY


class StoreFullError(TemporaryError):
    """The LMDB map or the disk is full; nothing of the failed write was kept."""


class DurabilityError(TemporaryError):
    """The configured durability level cannot be met right now (I1, I7)."""


class ConflictError(TemporaryError):
    """A conditional write lost a race (e.g. the mailbox changed meanwhile)."""


class ClockSkewError(TemporaryError):
    """A peer's change is stamped too far ahead of this node's clock
    (``cluster.max_clock_skew``); refused until the clocks agree again."""


def _all_subclasses(cls: type[ReplicadError]) -> list[type[ReplicadError]]:
    out: list[type[ReplicadError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def error_from_name(name: str, message: str) -> ReplicadError:
    """Rebuild an error that crossed a socket as (class name, message).

    Unknown names become a plain :class:`ReplicadError`, so an older client
    talking to a newer node still gets the message, only a less precise class.
    """
    classes: list[type[ReplicadError]] = [ReplicadError, *_all_subclasses(ReplicadError)]
    for cls in classes:
        if cls.__name__ == name:
            return cls(message)
    return ReplicadError(message)
