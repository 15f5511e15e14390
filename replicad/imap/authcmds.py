"""Commands valid in any state and before authentication (RFC 3501 §6.1-§6.2),
and the session-wide ones of the authenticated state: ENABLE (RFC 5161),
NAMESPACE (RFC 2342), IDLE (RFC 2177), ID (RFC 2971).

Passwords: LOGIN and AUTHENTICATE PLAIN are refused without TLS unless the
listener allows plaintext authentication (loopback, or
``imap.allow_plaintext_auth``), as RFC 3501 §6.2.3 and Dovecot's
``disable_plaintext_auth`` do; passwords are never logged.  After
``max_auth_failures`` failures the connection is closed.
"""

from __future__ import annotations

import logging

import trio

from replicad.imap.commands import (
    Authenticate,
    Capability,
    Enable,
    Id,
    Idle,
    Login,
    Logout,
    Namespace,
    Noop,
    StartTls,
)
from replicad.imap.responses import (
    ResponseCode,
    Status,
    render_bye,
    render_capability,
    render_continuation,
    render_enabled,
    render_id,
    render_namespace,
    render_sasl_challenge,
    render_tagged,
)
from replicad.imap.session import ImapSession, Outcome, Phase, Refusal
from replicad.imap.updates import send_updates

log = logging.getLogger("replicad.imap")

#: What ENABLE turns on (RFC 5161); QRESYNC implies CONDSTORE (RFC 7162 §3.2.3).
ENABLEABLE = ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT")
#: Seconds added before answering a failed login (slows password guessing).
FAILED_LOGIN_DELAY = 1.0


async def capability(session: ImapSession, cmd: Capability) -> None:
    await session.send(render_capability(session.capabilities()))
    await session.ok(cmd.tag, "CAPABILITY completed")


async def noop(session: ImapSession, cmd: Noop) -> None:
    await send_updates(session, expunges=True)
    await session.ok(cmd.tag, "NOOP completed")


async def logout(session: ImapSession, cmd: Logout) -> None:
    await session.send(render_bye("Logging out"))
    await session.ok(cmd.tag, "LOGOUT completed")
    session.phase = Phase.LOGOUT
    session.outcome = Outcome.CLOSE


async def ident(session: ImapSession, cmd: Id) -> None:
    params = [("name", "replicad")]
    if session.settings.version:
        params.append(("version", session.settings.version))
    await session.send(render_id(params))
    await session.ok(cmd.tag, "ID completed")


async def starttls(session: ImapSession, cmd: StartTls) -> None:
    if session.secure or not session.settings.starttls:
        raise Refusal("STARTTLS is not available on this connection", bad=True)
    await session.ok(cmd.tag, "Begin TLS negotiation now")
    session.outcome = Outcome.STARTTLS


def _check_privacy(session: ImapSession) -> None:
    if not (session.secure or session.settings.plaintext_auth):
        raise Refusal("Plaintext authentication disallowed without TLS", "PRIVACYREQUIRED")


async def login(session: ImapSession, cmd: Login) -> None:
    _check_privacy(session)
    await _authenticate(session, cmd.tag, cmd.username, cmd.password)


async def authenticate(session: ImapSession, cmd: Authenticate) -> None:
    if cmd.mechanism != "PLAIN":
        raise Refusal(f"Unsupported authentication mechanism {cmd.mechanism}")
    _check_privacy(session)
    if cmd.initial_response is not None:
        await _plain(session, cmd.tag, cmd.initial_response)
        return

    async def respond(tag: str, data: bytes | None) -> None:
        await _plain(session, tag, data)

    session.sasl_pending = respond
    session.parser.expect_sasl_response(cmd.tag)
    await session.send(render_sasl_challenge(b""))


async def _plain(session: ImapSession, tag: str, data: bytes | None) -> None:
    """RFC 4616 PLAIN: ``authzid NUL authcid NUL passwd``; no proxy authorisation."""
    if data is None:
        await session.send(_tagged_bad(tag, "AUTHENTICATE cancelled"))
        return
    parts = data.split(b"\0")
    if len(parts) != 3:
        await session.send(_tagged_bad(tag, "Malformed PLAIN response"))
        return
    authzid, authcid, password = parts
    try:
        user = authcid.decode("utf-8")
        if authzid and authzid.decode("utf-8") != user:
            raise Refusal("Authorisation as another user is not supported", "AUTHORIZATIONFAILED")
    except UnicodeDecodeError:
        await session.send(_tagged_bad(tag, "PLAIN names must be UTF-8"))
        return
    await _authenticate(session, tag, user, password)


def _tagged_bad(tag: str, text: str) -> bytes:
    return render_tagged(tag, Status.BAD, text)


async def _authenticate(session: ImapSession, tag: str, name: str, password: bytes) -> None:
    user = await session.access.login(name, password)
    if user is None:
        session.auth_failures += 1
        log.info(
            "imap.auth_failed",
            extra={
                "kv": {
                    "session": session.session_id,
                    "user": name,
                    "failures": session.auth_failures,
                }
            },
        )
        await trio.sleep(FAILED_LOGIN_DELAY)
        if session.auth_failures >= session.settings.max_auth_failures:
            await session.send(render_bye("Too many authentication failures"))
            session.outcome = Outcome.CLOSE
        raise Refusal("Authentication failed", "AUTHENTICATIONFAILED")
    await session.access.ensure_inbox(user)
    session.logged_in(user)
    code = ResponseCode.capability(session.capabilities())
    await session.ok(tag, "Logged in", code)


async def enable(session: ImapSession, cmd: Enable) -> None:
    turned_on = []
    for name in cmd.capabilities:
        if name in ENABLEABLE and name not in session.enabled:
            session.enabled.add(name)
            turned_on.append(name)
    if "QRESYNC" in session.enabled or "CONDSTORE" in session.enabled:
        session.condstore = True
    if "UTF8=ACCEPT" in turned_on:
        session.parser.enable_utf8_names()
    await session.send(render_enabled(turned_on))
    await session.ok(cmd.tag, "ENABLE completed")


async def namespace(session: ImapSession, cmd: Namespace) -> None:
    await session.send(render_namespace([("", "/")], utf8=session.utf8))
    await session.ok(cmd.tag, "NAMESPACE completed")


async def idle(session: ImapSession, cmd: Idle) -> None:
    """RFC 2177: ``+ idling``, then updates as they happen until DONE; the
    glue wakes :func:`~replicad.imap.updates.send_updates` on every commit."""
    session.idling = cmd.tag
    session.parser.expect_idle_done(cmd.tag)
    await session.send(render_continuation("idling"))
    await send_updates(session, expunges=True)
