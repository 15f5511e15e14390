"""One IMAP connection's state machine (RFC 3501 §3, RFC 9051 §3).

States: not authenticated → authenticated → selected → logout.  The
session owns the command parser (:mod:`replicad.imap.parser`): the trio
glue (:mod:`replicad.imap.server`) feeds it the client's octets with
:meth:`ImapSession.receive` and calls :meth:`ImapSession.process`, which
answers every complete command through the glue's :class:`Output`, and
says when the glue must act (start TLS, close).  Commands run one at a time
in the order received (RFC 3501 §5.5 allows no more for a session that
may renumber messages).

Each command is a handler in one table (:mod:`replicad.imap.commandtable`):
the states it is valid in and a coroutine ``handler(session, command)``.  A handler
refuses with :class:`Refusal` (``NO``/``BAD`` with a response code); any
other :class:`~replicad.errors.ReplicadError` is mapped by
:func:`refusal_of` (a mailbox that does not exist is ``NO [NONEXISTENT]``,
a write the cluster cannot make durable now is ``NO [UNAVAILABLE]`` with
nothing half done, architecture.md §11).  An unexpected exception is
logged and answered ``NO [SERVERBUG]``: the session lives on.

The handlers live in :mod:`replicad.imap.authcmds`,
:mod:`replicad.imap.mailboxcmds` and :mod:`replicad.imap.selectedcmds`;
untagged updates of the selected mailbox in :mod:`replicad.imap.updates`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from replicad.errors import (
    AlreadyExistsError,
    BadInputError,
    NoSuchMailboxError,
    NotFoundError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
)
from replicad.imap.commands import Command
from replicad.imap.mailaccess import MailAccess
from replicad.imap.parser import (
    BadCommand,
    CommandParser,
    IdleDone,
    LineTooLong,
    LiteralTooLarge,
    NeedContinuation,
    NeedData,
    ParserLimits,
    SaslResponse,
)
from replicad.imap.responses import (
    ResponseCode,
    Status,
    render_bye,
    render_continuation,
    render_tagged,
    render_untagged_status,
)
from replicad.imap.view import MailboxView

log = logging.getLogger("replicad.imap")


class Phase(Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Outcome(Enum):
    """What the glue must do after :meth:`ImapSession.process`."""

    CONTINUE = "continue"  # read more
    STARTTLS = "starttls"  # wrap the stream in TLS, then call tls_started()
    CLOSE = "close"  # close the connection


class Output(Protocol):
    async def send(self, data: bytes) -> None: ...


class Refusal(ReplicadError):
    """A command answered ``NO`` (or ``BAD``) with an optional response code."""

    def __init__(self, text: str, code: str | None = None, *, bad: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.bad = bad


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a session needs to know about its listener and the node."""

    #: STARTTLS can be offered (a certificate is configured and the stream is plain).
    starttls: bool = False
    #: LOGIN/AUTHENTICATE PLAIN allowed without TLS (loopback or configured).
    plaintext_auth: bool = False
    limits: ParserLimits = field(default_factory=ParserLimits)
    #: Answered to ID (RFC 2971).
    version: str = ""
    #: Failed logins before the connection is closed.
    max_auth_failures: int = 3


@dataclass(slots=True)
class Selected:
    """The selected mailbox: its name and GUID when selected, and the view."""

    name: str
    guid: bytes
    view: MailboxView
    read_only: bool
    #: UIDs that are \Recent for this session (replicad.imap.recent).
    recent: set[int] = field(default_factory=set)
    #: Keywords the client was told of in ``* FLAGS`` (RFC 3501 §7.2.6).
    keywords: set[str] = field(default_factory=set)
    #: The message count in the last EXISTS the client was sent.
    told_exists: int = 0


Handler = Callable[[Any, Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a command is valid and what answers it."""

    phases: frozenset[Phase]
    handler: Handler


ANY = frozenset({Phase.NOT_AUTHENTICATED, Phase.AUTHENTICATED, Phase.SELECTED})
NOT_AUTHENTICATED = frozenset({Phase.NOT_AUTHENTICATED})
AUTHENTICATED = frozenset({Phase.AUTHENTICATED, Phase.SELECTED})
SELECTED = frozenset({Phase.SELECTED})


class ImapSession:
    """One client connection's IMAP state; see the module docstring."""

    def __init__(
        self,
        access: MailAccess,
        out: Output,
        settings: SessionSettings,
        routes: Mapping[type[Command], Route],
        *,
        secure: bool,
        session_id: str = "",
        record: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """``record(command, result, seconds)`` is told of every command (metrics)."""
        self.access = access
        self.routes = routes
        self.out = out
        self.settings = settings
        self.secure = secure
        self.session_id = session_id
        self._record = record
        self.parser = CommandParser(settings.limits)
        self.phase = Phase.NOT_AUTHENTICATED
        self.user: str | None = None
        self.selected: Selected | None = None
        #: RFC 5161 ENABLEd extensions (CONDSTORE, QRESYNC, UTF8=ACCEPT).
        self.enabled: set[str] = set()
        #: RFC 7162 §3.1: CONDSTORE is on once a command used it.
        self.condstore = False
        #: RFC 5182 SEARCHRES: the UIDs of the last SEARCH RETURN (SAVE).
        self.saved_uids: list[int] = []
        #: The tag of the IDLE in progress (RFC 2177), if any.
        self.idling: str | None = None
        #: Continues the AUTHENTICATE in progress with the client's response.
        self.sasl_pending: Callable[[str, bytes | None], Awaitable[None]] | None = None
        self.auth_failures = 0
        self.outcome = Outcome.CONTINUE
        self.commands = 0

    # -- output helpers --

    async def send(self, data: bytes) -> None:
        if data:
            await self.out.send(data)

    async def ok(self, tag: str, text: str, code: ResponseCode | None = None) -> None:
        await self.send(render_tagged(tag, Status.OK, text, code))

    async def untagged_ok(self, text: str, code: ResponseCode | None = None) -> None:
        await self.send(render_untagged_status(Status.OK, text, code))

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    def require_user(self) -> str:
        assert self.user is not None, "handler ran before authentication"
        return self.user

    async def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command ran (RFC 7162 §3.1).  When it is the
        first and a mailbox is selected, the client learns HIGHESTMODSEQ
        now, in an untagged OK, as §3.1 requires."""
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None and self.user is not None:
            status = await self.access.status(self.user, self.selected.name)
            modseq = self.selected.view.report_highestmodseq(status.highestmodseq)
            await self.untagged_ok("Highest", ResponseCode.highestmodseq(modseq))

    def require_selected(self) -> Selected:
        if self.selected is None:
            raise Refusal("No mailbox selected", bad=True)
        return self.selected

    def capabilities(self) -> list[str]:
        """What CAPABILITY lists in the current state (RFC 3501 §6.1.1)."""
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.phase is Phase.NOT_AUTHENTICATED:
            if self.settings.starttls and not self.secure:
                caps.append("STARTTLS")
            if self.secure or self.settings.plaintext_auth:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
            return caps
        return [
            *caps,
            "NAMESPACE",
            "UIDPLUS",
            "UNSELECT",
            "CHILDREN",
            "MOVE",
            "CONDSTORE",
            "QRESYNC",
            "ESEARCH",
            "SEARCHRES",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "SPECIAL-USE",
            "BINARY",
            "STATUS=SIZE",
            "UTF8=ACCEPT",
        ]

    # -- driving --

    async def greet(self) -> None:
        code = ResponseCode.capability(self.capabilities())
        await self.untagged_ok("replicad IMAP ready", code)

    def receive(self, data: bytes) -> None:
        self.parser.feed(data)

    async def process(self) -> Outcome:
        """Answer every complete command fed so far."""
        while self.outcome is Outcome.CONTINUE:
            event = self.parser.next_event()
            if isinstance(event, NeedData):
                break
            if isinstance(event, NeedContinuation):
                await self.send(render_continuation("Ready for literal data"))
            elif isinstance(event, BadCommand):
                await self._bad_command(event)
            elif isinstance(event, LineTooLong):
                await self.send(render_bye(f"Command line longer than {event.limit} octets"))
                self.outcome = Outcome.CLOSE
            elif isinstance(event, LiteralTooLarge):
                text = f"Literal of {event.size} octets is larger than {event.limit}"
                code = ResponseCode.simple("TOOBIG")
                if event.tag is not None:
                    await self.send(render_tagged(event.tag, Status.NO, text, code))
                if not event.synchronizing:
                    # The client is sending the octets anyway: do not read them all.
                    await self.send(render_bye(text, code))
                    self.outcome = Outcome.CLOSE
            elif isinstance(event, IdleDone):
                await self._end_idle(event.tag)
            elif isinstance(event, SaslResponse):
                pending, self.sasl_pending = self.sasl_pending, None
                if pending is not None:
                    await pending(event.tag, event.data)
            else:
                await self.run(event)
        return self.outcome

    async def _bad_command(self, event: BadCommand) -> None:
        if self.idling is not None and event.tag == self.idling:
            self.idling = None
        if event.bad_charset and event.tag is not None:
            code = ResponseCode.badcharset()
            await self.send(render_tagged(event.tag, Status.NO, event.message, code))
            return
        if event.tag is None:
            await self.send(render_untagged_status(Status.BAD, event.message))
        else:
            await self.send(render_tagged(event.tag, Status.BAD, event.message))

    async def run(self, command: Command) -> None:
        """Run one command to its tagged answer."""
        self.commands += 1
        route = self.routes.get(type(command))
        if route is None:
            name = type(command).__name__.upper()
            await self.send(render_tagged(command.tag, Status.BAD, f"Unknown command {name}"))
            return
        if self.phase not in route.phases:
            text = f"{type(command).__name__.upper()} is not valid in the {self.phase.value} state"
            await self.send(render_tagged(command.tag, Status.BAD, text))
            return
        name = type(command).__name__.upper()
        started = time.monotonic()
        result = "ok"
        try:
            await route.handler(self, command)
        except Refusal as refusal:
            result = "bad" if refusal.bad else "no"
            status = Status.BAD if refusal.bad else Status.NO
            code = ResponseCode.simple(refusal.code) if refusal.code else None
            await self.send(render_tagged(command.tag, status, str(refusal), code))
        except ReplicadError as exc:
            result = "no"
            mapped = refusal_of(exc)
            code = ResponseCode.simple(mapped.code) if mapped.code else None
            await self.send(render_tagged(command.tag, Status.NO, str(mapped), code))
        except Exception:
            result = "error"
            log.exception(
                "imap.command_failed",
                extra={"kv": {"session": self.session_id, "user": self.user, "command": name}},
            )
            code = ResponseCode.simple("SERVERBUG")
            await self.send(render_tagged(command.tag, Status.NO, "Internal error", code))
        finally:
            if self._record is not None:
                self._record(name, result, time.monotonic() - started)

    async def _end_idle(self, tag: str) -> None:
        self.idling = None
        await self.ok(tag, "IDLE terminated")

    # -- state changes --

    def logged_in(self, user: str) -> None:
        self.user = user
        self.phase = Phase.AUTHENTICATED
        log.info("imap.login", extra={"kv": {"session": self.session_id, "user": user}})

    def select(self, selected: Selected | None) -> None:
        self.selected = selected
        self.saved_uids = []
        if self.phase is not Phase.LOGOUT:
            self.phase = Phase.AUTHENTICATED if selected is None else Phase.SELECTED

    def tls_started(self) -> None:
        """The glue wrapped the stream in TLS (after STARTTLS)."""
        self.secure = True
        self.outcome = Outcome.CONTINUE


def refusal_of(exc: ReplicadError) -> Refusal:
    """The NO a store or cluster error becomes (RFC 5530 response codes)."""
    text = str(exc)
    if isinstance(exc, NoSuchMailboxError):
        return Refusal(text, "NONEXISTENT")
    if isinstance(exc, NotFoundError):
        return Refusal(text, "NONEXISTENT")
    if isinstance(exc, AlreadyExistsError):
        return Refusal(text, "ALREADYEXISTS")
    if isinstance(exc, TemporaryError | UnreachableError):
        return Refusal(f"{text} (nothing was changed; try again)", "UNAVAILABLE")
    if isinstance(exc, BadInputError):
        return Refusal(text, "CANNOT")
    return Refusal(text, "SERVERBUG")
